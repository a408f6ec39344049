"""hash_tensor: torch-facing wrapper of the C hasher (docs/hash.md).

It checks and prepares the tensor (resolves lazy conj/neg views) and hands it
to the C core through DLPack.  A CPU batch is one C call that also allocates
the digests (returned as a capsule); a CUDA batch gets a torch.empty output.
It never touches the bytes itself.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from . import _C

logger = logging.getLogger("torchcache_c")
_warned_cuda_copy = False
_to_dlpack = torch.utils.dlpack.to_dlpack
_from_capsule = getattr(torch._C, "_from_dlpack", torch.utils.dlpack.from_dlpack)
# hash_tensor's CPU path exports through the exporter call_fetch uses (cache.py sets
# the same one; whichever module is imported first registers it).
_C._set_tensor_exporter(_to_dlpack)


def _check_subsample(subsample_count: Optional[int]) -> int:
    if subsample_count is None:
        return 0
    if isinstance(subsample_count, bool) or not isinstance(subsample_count, int):
        raise TypeError(
            f"subsample_count must be an int or None, not {type(subsample_count).__name__}"
        )
    if subsample_count < 0:
        raise ValueError(f"subsample_count must be >= 0 or None, not {subsample_count}")
    return subsample_count


def _prepare(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.is_conj():
        x = x.resolve_conj()
    if x.is_neg():
        x = x.resolve_neg()
    return x


def hash_tensor(x: torch.Tensor, *, subsample_count: Optional[int] = None) -> torch.Tensor:
    """Return the 128-bit digest of every item ``x[i]`` as an int64 tensor of shape (B, 2).

    Every byte of each item is hashed, together with its dtype and per-item shape,
    unless ``subsample_count=N`` asks for the documented sample of N elements.
    The digest does not depend on batch size, position in the batch, memory layout
    or device.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hash_tensor() expects a torch.Tensor, not {type(x).__name__}")
    count = 0 if subsample_count is None else _check_subsample(subsample_count)
    if x.layout != torch.strided:
        raise TypeError(f"hash_tensor() needs a dense (strided) tensor, not {x.layout}; "
                        "convert it with x.to_dense()")
    if x.is_quantized:
        raise TypeError(f"hash_tensor() does not take quantized tensors ({x.dtype}); "
                        "hash x.int_repr() or x.dequantize() instead")
    if x.dim() == 0:
        raise ValueError(
            "hash_tensor() needs a batch dimension: a 0-d tensor has no items; "
            "use x.reshape(1) to hash one scalar item"
        )
    if x.is_cpu and x.shape[0]:
        # One C call exports x (torch's C exporter: Tensor.__dlpack__'s Python checks
        # cost more than hashing a small batch), hashes it and hands back a new digest
        # buffer as a capsule (no torch.empty).  The exporter reads the bytes as they
        # are stored, so a lazy conjugate or negation is resolved first; grad does
        # not matter to a read (the capsule keeps x alive, not its graph).
        if x.is_conj() or x.is_neg():
            x = x.resolve_conj().resolve_neg()
        return _from_capsule(_C.hash_into(x, None, count, 0, torch.get_num_threads()))
    if not (x.is_cpu or x.is_cuda):
        raise ValueError(f"hash_tensor() supports CPU and CUDA tensors, not {x.device.type}")
    out = torch.empty((x.shape[0], 2), dtype=torch.int64)
    if x.shape[0] == 0:
        return out
    return _hash_cuda(_prepare(x), out, count)


def _hash_cuda(x: torch.Tensor, out: torch.Tensor, count: int) -> torch.Tensor:
    global _warned_cuda_copy
    stream = torch.cuda.current_stream(x.device).cuda_stream
    try:
        _C.hash_into(x, out, count, stream)
        return out
    except NotImplementedError as exc:
        if not _warned_cuda_copy:
            logger.warning("hashing CUDA tensors on the host (%s)", exc)
            _warned_cuda_copy = True
    _C.hash_into(x.cpu(), out, count, 0, torch.get_num_threads())
    return out
