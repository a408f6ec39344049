"""Run by tests/test_cuda_kernel_image.py in a process whose libcuda.so.1 is the fake.

Asks the extension to hash a fake CUDA batch three times (twice through _C.hash_into,
once through hashing.py's CUDA path) and prints what happened as JSON.  The fake
driver fails every module load, so the batch's device pointer is never touched.
"""

import ctypes
import json
import logging
import types

import torch

import torchcache_c
from torchcache_c import _C, hashing


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p), ("device_type", ctypes.c_int32),
        ("device_id", ctypes.c_int32), ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8),
        ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16),
        ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManaged(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_keep = []


def cuda_capsule():
    """A DLPack capsule of a (4, 16) float32 batch on cuda:0 at a fake address."""
    shape = (ctypes.c_int64 * 2)(4, 16)
    managed = _DLManaged()
    managed.dl_tensor = _DLTensor(0x10000, 2, 0, 2, 2, 32, 1, shape, None, 0)
    _keep.append((shape, managed))
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype = ctypes.py_object
    new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new_capsule(ctypes.addressof(managed), b"dltensor", None)


class FakeCudaBatch:
    """What hashing.py's CUDA path uses of a tensor: device, __dlpack__, cpu()."""

    device = torch.device("cuda", 0)

    def __init__(self, host):
        self.host = host

    def __dlpack__(self, **kwargs):
        return cuda_capsule()

    def cpu(self):
        return self.host


errors = []
for _ in range(2):
    try:
        _C.hash_into(cuda_capsule(), torch.empty((4, 2), dtype=torch.int64), 0, 0)
        errors.append(None)
    except NotImplementedError as exc:
        errors.append(str(exc))

warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append((record.levelname, record.getMessage()))
logging.getLogger("torchcache_c").addHandler(handler)
torch.cuda.current_stream = lambda device=None: types.SimpleNamespace(cuda_stream=0)
host = torch.arange(64, dtype=torch.float32).reshape(4, 16)
digests = hashing._hash_cuda(FakeCudaBatch(host), torch.empty((4, 2), dtype=torch.int64), 0)

print(json.dumps({
    "extension": _C.__file__,
    "build_info": torchcache_c.build_info(),
    "errors": errors,
    "warnings": warnings,
    "host_digests_match": bool(torch.equal(digests, torchcache_c.hash_tensor(host))),
}))
