"""Without an NVIDIA driver a CUDA batch is refused with NotImplementedError.

hashing.py turns that error into a host copy, so the message must say why.
A CUDA tensor is faked with a DLPack capsule built by ctypes; the test runs only
where libcuda.so.1 cannot be loaded, so the fake pointer is never dereferenced.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from torchcache_c import _C


def _have_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(_have_driver(), reason="an NVIDIA driver is installed")


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device_type", ctypes.c_int32),
        ("device_id", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("code", ctypes.c_uint8),
        ("bits", ctypes.c_uint8),
        ("lanes", ctypes.c_uint16),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManaged(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


def test_cuda_batch_without_driver_raises_not_implemented_with_reason():
    shape = (ctypes.c_int64 * 2)(4, 16)
    managed = _DLManaged()
    managed.dl_tensor = _DLTensor(0x10000, 2, 0, 2, 2, 32, 1, shape, None, 0)
    name = b"dltensor"
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype = ctypes.py_object
    new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    capsule = new_capsule(ctypes.addressof(managed), name, None)
    out = torch.empty((4, 2), dtype=torch.int64)
    with pytest.raises(NotImplementedError) as exc:
        _C.hash_into(capsule, out, 0, 0)
    if _C.build_info()["cuda_kernels"]:
        assert "libcuda.so.1" in str(exc.value)
    else:
        assert "no CUDA kernels" in str(exc.value)
