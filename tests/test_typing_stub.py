"""torchcache_c/_C.pyi names exactly what the extension defines."""

from __future__ import annotations

import ast
from pathlib import Path

from torchcache_c import _C

STUB = Path(_C.__file__).with_name("_C.pyi")


def stub_names():
    tree = ast.parse(STUB.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    (store,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Store"]
    members = {n.name for n in store.body if isinstance(n, ast.FunctionDef)}
    return functions, members


def test_stub_lists_every_module_function():
    functions, _ = stub_names()
    runtime = {n for n, v in vars(_C).items() if callable(v) and not isinstance(v, type)}
    assert functions == runtime


def test_stub_lists_every_store_method_and_property():
    _, members = stub_names()
    runtime = {n for n, v in vars(_C.Store).items()
               if not n.startswith("__") or n in ("__enter__", "__exit__", "__new__")}
    runtime.add("__new__")
    assert members == runtime


def doc_params(obj) -> list:
    """Parameter names of the signature line that opens a C docstring (CPython
    moves a line it can parse to __text_signature__)."""
    line = getattr(obj, "__text_signature__", None) or (obj.__doc__ or "").splitlines()[0]
    inside = line[line.index("(") + 1:line.index(")")]
    return [p.split("=")[0].strip() for p in inside.split(",")
            if p.strip() not in ("", "*", "/", "$module", "$self", "$type")]


def test_stub_parameters_match_the_c_docstrings():
    tree = ast.parse(STUB.read_text())
    stub = {n.name: [a.arg for a in n.args.posonlyargs + n.args.args + n.args.kwonlyargs
                     if a.arg not in ("self", "cls")]
            for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    for name in ("hash_into", "_set_simd", "build_info", "compact", "call_fetch", "call_put",
                 "_set_tensor_exporter"):
        assert doc_params(getattr(_C, name)) == stub[name], name
    for name in ("lookup", "gather", "put", "entry_info", "refresh", "stats", "take_faults",
                 "verify", "close"):
        assert doc_params(getattr(_C.Store, name)) == stub[name], name
    assert doc_params(_C.Store) == stub["__new__"]
