"""Build of torchcache_c._C: plain C against the CPython API, no torch at build time.

The SIMD stripe loops are compiled with their own instruction-set flags (the rest
of the extension stays portable), and when nvcc is found the CUDA kernels are
compiled to a fatbin that is embedded in the extension as bytes.  Environment:

  TORCHCACHE_C_NO_CUDA=1   do not look for nvcc
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
# SASS for these, plus PTX of the newest for GPUs that come later.
CUDA_ARCHS = ["75", "80", "86", "89", "90"]


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
        nvcc = _find_nvcc()
        embed_c = None
        if nvcc:
            try:
                embed_c = self._build_fatbin(nvcc, build_temp)
            except (OSError, subprocess.CalledProcessError) as exc:
                # A broken CUDA toolkit must not break a user's install: CUDA
                # tensors are then hashed on the host.  CI (WERROR) wants to know.
                if os.environ.get("TORCHCACHE_C_WERROR") == "1":
                    raise
                print(f"torchcache_c: nvcc failed ({exc}); building without CUDA kernels",
                      file=sys.stderr)
        if embed_c:
            objects += self.compiler.compile(
                [str(embed_c)],
                output_dir=self.build_temp,
                include_dirs=ext.include_dirs,
                extra_postargs=ext.extra_compile_args,
            )
            ext.define_macros = ext.define_macros + [("TC_HAVE_CUDA_FATBIN", "1")]
        elif not nvcc:
            print("torchcache_c: nvcc not found; building without CUDA kernels", file=sys.stderr)
        ext.extra_objects = ext.extra_objects + objects
        super().build_extension(ext)

    def _build_fatbin(self, nvcc, build_temp: Path) -> Path:
        """Compile csrc/hash_cuda.cu to a fatbin and write it as a C byte array."""
        fatbin = build_temp / "hash_cuda.fatbin"
        archs = _nvcc_supported_archs(nvcc)
        gencode = []
        for arch in archs:
            gencode += [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
        gencode += [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        cmd = [nvcc, "--fatbin", "-O3", "-I", str(CSRC), *gencode,
               "-o", str(fatbin), str(CSRC / "hash_cuda.cu")]
        print(" ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        data = fatbin.read_bytes()
        embed_c = build_temp / "hash_cuda_fatbin.c"
        lines = [", ".join(str(b) for b in data[i:i + 24]) for i in range(0, len(data), 24)]
        embed_c.write_text(
            "/* Generated by setup.py from csrc/hash_cuda.cu; do not edit. */\n"
            "#include <stddef.h>\n"
            "/* 8-byte alignment: the driver reads the fatbin header in place. */\n"
            "const unsigned char tc_hash_cuda_fatbin[] __attribute__((aligned(8))) = {\n"
            + ",\n".join(lines)
            + "\n};\n"
            f"const size_t tc_hash_cuda_fatbin_len = {len(data)};\n"
        )
        return embed_c


def _extension() -> Extension:
    sources = sorted(
        str(p.relative_to(ROOT)) for p in CSRC.glob("*.c") if p.name not in SIMD_SOURCES
    )
    compile_args = ["-O3", "-std=c11", "-fvisibility=hidden"]
    link_args = []
    if os.environ.get("TORCHCACHE_C_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
               "-fno-omit-frame-pointer", "-O1", "-g"]
        compile_args += san
        link_args += san
    return Extension(
        "torchcache_c._C",
        sources=sources,
        include_dirs=[str(CSRC)],
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
