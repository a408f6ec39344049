"""Hand-built DLPack capsules: dtypes torch never exports reach the extension's DLPack reader.

torch exports no sub-byte dtype through DLPack, so these tests build the DLManagedTensor
themselves with ctypes (the published DLPack v0.8 ABI) and wrap it with PyCapsule_New under
the name "dltensor", as a producer would. A capsule built the same way with a whole-byte
dtype must hash exactly like the torch tensor holding the same bytes: that control shows the
refusals below come from the dtype alone, not from a malformed capsule.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

import torchcache_c

_C = torchcache_c._C


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int32),
                ("dtype", _DType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _Managed(ctypes.Structure):
    pass


_Managed._fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p),
                     ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(_Managed)))]

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

_KDL_CPU, _KDL_INT, _KDL_UINT = 1, 0, 1


class _Capsule:
    """A "dltensor" capsule over `data` (bytes) read as `shape` elements of the given dtype.
    The capsule has no destructor and no deleter: this object owns every buffer and must
    outlive the capsule's use."""

    def __init__(self, data: bytes, shape, code: int, bits: int, lanes: int = 1):
        self.buf = ctypes.create_string_buffer(data, len(data))
        self.shape = (ctypes.c_int64 * len(shape))(*shape)
        self.managed = _Managed()
        t = self.managed.dl_tensor
        t.data = ctypes.cast(self.buf, ctypes.c_void_p)
        t.device = _Device(_KDL_CPU, 0)
        t.ndim = len(shape)
        t.dtype = _DType(code, bits, lanes)
        t.shape = self.shape
        t.strides = None  # compact row-major
        t.byte_offset = 0
        self.capsule = _capsule_new(ctypes.addressof(self.managed), b"dltensor", None)


def _digests(x) -> torch.Tensor:
    out = torch.zeros(2, 2, dtype=torch.int64)
    _C.hash_into(x, out)
    return out


def test_a_hand_built_whole_byte_capsule_hashes_like_the_torch_tensor_with_its_bytes():
    data = bytes(range(16))
    cap = _Capsule(data, (2, 8), _KDL_UINT, 8)
    expected = _digests(torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(2, 8))
    assert torch.equal(_digests(cap.capsule), expected)
    assert not torch.equal(expected[0], expected[1])


@pytest.mark.parametrize("bits,lanes", [(4, 1), (12, 1), (4, 3), (1, 1)],
                         ids=["int4", "int12", "int4x3", "int1"])
def test_a_dtype_that_is_not_a_whole_number_of_bytes_is_refused_clearly(bits, lanes):
    # int12 would otherwise be read as one byte per element (a wrong digest, silently), and
    # int4 as zero bytes per element.
    cap = _Capsule(bytes(64), (2, 8), _KDL_INT, bits, lanes)
    with pytest.raises(TypeError) as err:
        _digests(cap.capsule)
    message = str(err.value)
    assert "x has a dtype of %d bits x %d lanes" % (bits, lanes) in message
    assert "not a whole number of bytes per element" in message


def test_a_zero_bit_dtype_is_refused_clearly():
    cap = _Capsule(bytes(16), (2, 8), _KDL_UINT, 0)
    with pytest.raises(TypeError, match="not a whole number of bytes per element"):
        _digests(cap.capsule)
