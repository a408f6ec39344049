"""Build of torchcache_c._C: plain C against the CPython API, no torch at build time.

The SIMD stripe loops are compiled with their own instruction-set flags (the rest
of the extension stays portable).  The CUDA kernels are always embedded: the PTX
committed as csrc/hash_cuda.ptx (tools/gen_ptx.py), which the driver JIT-compiles,
and, when nvcc is found, a fatbin with SASS for the common GPUs plus that same PTX.
Environment:

  TORCHCACHE_C_NO_CUDA=1   do not look for nvcc (the PTX is still embedded)
  TORCHCACHE_C_WERROR=1    add -Werror (CI only; a user's build never fails on a warning)
  TORCHCACHE_C_SANITIZE=1  build with AddressSanitizer and UBSan (CI's sanitizer step)
"""

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "torchcache_c" / "_version.py").read_text()
).group(1)

# The one list of which C file needs which instruction-set flags: file -> flags.
# Compiled only on x86-64 with these flags, called only when the CPU has them
# (csrc/hash_dispatch.c).  fuzz/build.sh and .ci/aarch64.sh read this dict
# through .ci/simd_sources.py.
SIMD_SOURCES = {
    "hash_avx2.c": ["-mavx2"],
    "hash_avx512.c": ["-mavx512f", "-mavx512dq"],
}
# SASS for these when nvcc is found; every other GPU JIT-compiles the compute_75 PTX.
CUDA_ARCHS = ["75", "80", "86", "89", "90"]
# Kinds of kernel image, as csrc/cuda.h numbers them.
TC_CUDA_KIND_SASS, TC_CUDA_KIND_PTX = 1, 2

sys.path.insert(0, str(ROOT / "tools"))
import gen_ptx  # noqa: E402  (tools/gen_ptx.py: generates and stamps csrc/hash_cuda.ptx)


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _find_nvcc():
    if os.environ.get("TORCHCACHE_C_NO_CUDA") == "1":
        return None
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _nvcc_supported_archs(nvcc):
    try:
        out = subprocess.run(
            [nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return CUDA_ARCHS
    have = set(re.findall(r"sm_(\d+)", out))
    return [a for a in CUDA_ARCHS if a in have] or CUDA_ARCHS


class BuildExt(build_ext):
    def build_extension(self, ext):
        # CPython's calling convention hands every method a `self` it may not use.
        warn = ["-Wall", "-Wextra", "-Wno-unused-parameter"]
        if os.environ.get("TORCHCACHE_C_WERROR") == "1":
            warn.append("-Werror")
        ext.extra_compile_args = ext.extra_compile_args + warn
        build_temp = Path(self.build_temp)
        build_temp.mkdir(parents=True, exist_ok=True)
        objects = []
        if _is_x86_64():
            for name, flags in SIMD_SOURCES.items():
                objects += self.compiler.compile(
                    [str(CSRC / name)],
                    output_dir=self.build_temp,
                    include_dirs=ext.include_dirs,
                    macros=ext.define_macros,
                    extra_postargs=ext.extra_compile_args + flags,
                )
        embed_c = self._embed_kernels(build_temp)
        if embed_c:
            objects += self.compiler.compile(
                [str(embed_c)],
                output_dir=self.build_temp,
                include_dirs=ext.include_dirs,
                extra_postargs=ext.extra_compile_args,
            )
            ext.define_macros = ext.define_macros + [("TC_HAVE_CUDA_IMAGE", "1")]
        ext.extra_objects = ext.extra_objects + objects
        super().build_extension(ext)

    def _embed_kernels(self, build_temp: Path):
        """Write the kernel image as a C byte array; None if there is none to embed.

        The image is the committed PTX when its stamp matches the sources (always, for
        a user: sdists and wheels ship it fresh), else PTX generated here by nvcc.
        With nvcc it becomes a fatbin holding SASS for CUDA_ARCHS and the PTX, all
        compiled from that one PTX, and the driver picks SASS when the GPU has it.
        """
        nvcc = _find_nvcc()
        if gen_ptx.is_fresh(CSRC):
            ptx = (CSRC / gen_ptx.PTX_NAME).read_text()
        elif nvcc:
            print("torchcache_c: csrc/hash_cuda.ptx is stale; using PTX generated from the "
                  "sources (run python tools/gen_ptx.py and commit it)", file=sys.stderr)
            try:
                ptx = gen_ptx.generate(nvcc, CSRC)
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                if os.environ.get("TORCHCACHE_C_WERROR") == "1":
                    raise
                print(f"torchcache_c: nvcc failed ({exc}); building without CUDA kernels",
                      file=sys.stderr)
                return None
        else:
            # PTX of other sources could hash differently from the CPU: embed none.
            print("torchcache_c: csrc/hash_cuda.ptx does not match the sources and nvcc was "
                  "not found; building without CUDA kernels", file=sys.stderr)
            return None
        ptx_file = build_temp / gen_ptx.PTX_NAME
        ptx_file.write_text(ptx)
        image, kinds = ptx.encode() + b"\0", TC_CUDA_KIND_PTX
        if nvcc:
            try:
                image = self._build_fatbin(nvcc, ptx_file)
                kinds |= TC_CUDA_KIND_SASS
            except (OSError, subprocess.CalledProcessError) as exc:
                # A broken CUDA toolkit must not break a user's install: the PTX
                # is still embedded.  CI (WERROR) wants to know.
                if os.environ.get("TORCHCACHE_C_WERROR") == "1":
                    raise
                print(f"torchcache_c: nvcc failed ({exc}); embedding the PTX only",
                      file=sys.stderr)
        else:
            print("torchcache_c: nvcc not found; embedding the PTX only (the driver compiles it "
                  "on first use)", file=sys.stderr)
        embed_c = build_temp / "hash_cuda_image.c"
        lines = [", ".join(str(b) for b in image[i:i + 24]) for i in range(0, len(image), 24)]
        embed_c.write_text(
            "/* Generated by setup.py from csrc/hash_cuda.ptx; do not edit. */\n"
            "#include <stddef.h>\n"
            "/* 8-byte alignment: the driver reads a fatbin header in place. */\n"
            "const unsigned char tc_hash_cuda_image[] __attribute__((aligned(8))) = {\n"
            + ",\n".join(lines)
            + "\n};\n"
            f"const size_t tc_hash_cuda_image_len = {len(image)};\n"
            f"const int tc_hash_cuda_image_kinds = {kinds};\n"
        )
        return embed_c

    def _build_fatbin(self, nvcc, ptx_file: Path) -> bytes:
        """SASS for every arch of CUDA_ARCHS that nvcc knows, plus the PTX itself."""
        fatbin = ptx_file.with_suffix(".fatbin")
        codes = [f"sm_{a}" for a in _nvcc_supported_archs(nvcc)] + [f"compute_{gen_ptx.ARCH}"]
        cmd = [nvcc, "--fatbin", f"-arch=compute_{gen_ptx.ARCH}", f"-code={','.join(codes)}",
               "-o", str(fatbin), str(ptx_file)]
        print(" ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        return fatbin.read_bytes()


def _extension() -> Extension:
    sources = sorted(
        str(p.relative_to(ROOT)) for p in CSRC.glob("*.c") if p.name not in SIMD_SOURCES
    )
    compile_args = ["-O3", "-std=c11", "-fvisibility=hidden"]
    link_args = []
    if os.environ.get("TORCHCACHE_C_SANITIZE") == "1":
        # -fno-wrapv: CPython's CFLAGS carry -fwrapv, which makes signed overflow
        # defined and hides it from UBSan; the C core must not rely on it.
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
               "-fno-wrapv", "-fno-omit-frame-pointer", "-O1", "-g"]
        compile_args += san
        link_args += san
    return Extension(
        "torchcache_c._C",
        sources=sources,
        include_dirs=[str(CSRC)],
        # build_ext relinks only when a source or one of these is newer than the
        # extension: the headers, and the SIMD files, which BuildExt compiles into
        # extra objects that its check does not look at (an edit to one of them
        # alone left the old kernel in place).
        depends=sorted(
            str(p.relative_to(ROOT)) for p in CSRC.glob("*")
            if p.suffix == ".h" or p.name in SIMD_SOURCES
        ),
        define_macros=[("TC_VERSION", f'"{VERSION}"'), ("_GNU_SOURCE", "1")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=["dl", "pthread"],
    )


setup(
    version=VERSION,
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExt},
)
