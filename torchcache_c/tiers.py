"""The tiers behind one interface: where a module key's outputs are kept.

``HostTier`` is the C store (csrc/store.c): a persistent directory of segments, or an
anonymous arena in host memory.  ``DeviceTier`` is the memory tier on a device
(``memory_cache_device="cuda"``).  cache.py sees only the interface they share:

    lookup(keys) -> bytes            one byte per row: 1 if the key is present
    put(keys, src) -> int            store row i of src under keys[i]; rows stored
    fetch(keys, dtype, device)       (rows as one tensor on `device` in `dtype`, or None;
        -> (tensor, served)          bool mask of the rows it could serve)
    is_full, io_error, stats(), take_faults(), close()

A HostTier's C store (``.store``) also takes the one-call path of csrc/call.c:
cache.py calls ``_C.call_fetch`` (a whole call's keys, lookup and hits) and
``_C.call_put`` (every leaf's computed rows) on it directly, without a Python frame
in between; a DeviceTier serves the step-by-step path above.

A fault is a row not served, never an exception: the caller recomputes those rows.

In the DeviceTier, outputs stay on the device in one growing *slab* tensor per (dtype,
item shape); the C arena store maps each key to a (slab, row) pair of int64s.  A hit
batch is then one C gather of the small index records plus one ``index_select`` on the
device: no host round trip and no Python loop over items.  Only device-agnostic torch
calls are used, so the class is tested on the CPU as well.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import _C


class HostTier:
    """The C store (directory or arena) behind the tier interface."""

    def __init__(self, store: Any, dtype_of_word: Callable[[int], torch.dtype]):
        self.store = store
        self._dtype_of_word = dtype_of_word
        # Called once per cached call: the C methods themselves, no Python frame.
        self.take_faults = store.take_faults

    @property
    def is_full(self) -> bool:
        return bool(self.store.is_full)

    @property
    def io_error(self) -> Optional[str]:
        return self.store.io_error

    def lookup(self, keys: torch.Tensor) -> bytes:
        return self.store.lookup(keys)

    def put(self, keys: torch.Tensor, src: torch.Tensor) -> int:
        return self.store.put(keys, src.to("cpu").contiguous())

    def fetch(self, keys: torch.Tensor, dtype: torch.dtype,
              device: torch.device) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        try:
            word, shape = self.store.entry_info(keys, 0)
        except KeyError:  # row 0's record went away since the lookup
            return None, torch.zeros(len(keys), dtype=torch.bool)
        # Hits for a GPU go through pinned memory and one non-blocking copy.
        pin = device.type == "cuda"
        dest = torch.empty((len(keys), *shape), dtype=self._dtype_of_word(word),
                           pin_memory=pin)
        served = torch.frombuffer(bytearray(self.store.gather(keys, dest)),
                                  dtype=torch.uint8).bool()
        return dest.to(device=device, dtype=dtype, non_blocking=pin), served

    def stats(self) -> dict:
        return self.store.stats()

    def close(self) -> None:
        self.store.close()


class DeviceTier:
    """The memory tier on a device: slabs there, the C arena as the (slab, row) index."""

    def __init__(self, device: torch.device, max_bytes: int):
        self.device = torch.device(device)
        self.max_bytes = int(max_bytes)
        self.index = _C.Store(None)
        self.slabs: List[torch.Tensor] = []
        self.used: List[int] = []
        self.slab_of: Dict[Tuple[torch.dtype, tuple], int] = {}
        self.bytes = 0
        self.records = 0
        self.is_full = False
        self.io_error = None

    def lookup(self, keys: torch.Tensor) -> bytes:
        return self.index.lookup(keys)

    def put(self, keys: torch.Tensor, src: torch.Tensor) -> int:
        """Store row i of src under keys[i] (absent keys only); returns how many were stored."""
        if self.is_full:
            return 0
        absent = torch.frombuffer(bytearray(self.index.lookup(keys)), dtype=torch.uint8) == 0
        rows = absent.nonzero().squeeze(1)
        item_bytes = src[0].numel() * src.element_size() if len(src) else 0
        if item_bytes and self.max_bytes > 0:
            room = max(0, (self.max_bytes - self.bytes) // item_bytes)
            if room < len(rows):
                # As in torchcache: when full, the newest outputs are not stored.
                rows = rows[:room]
                self.is_full = True
        if not len(rows):
            return 0
        slab_id = self._slab(src.dtype, tuple(src.shape[1:]), len(rows))
        start = self.used[slab_id]
        self.slabs[slab_id][start:start + len(rows)] = src[rows.to(src.device)].to(self.device)
        self.used[slab_id] += len(rows)
        records = torch.stack([torch.full((len(rows),), slab_id, dtype=torch.int64),
                               torch.arange(start, start + len(rows), dtype=torch.int64)], 1)
        stored = self.index.put(keys[rows].contiguous(), records)
        self.bytes += item_bytes * len(rows)
        self.records += stored
        return stored

    def fetch(self, keys: torch.Tensor, dtype: torch.dtype,
              device: torch.device) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """The stored rows for keys (all present) on `device` in `dtype`; every row is
        served (the slabs live in this process: no fault can take them away)."""
        return (self.rows(keys).to(device=device, dtype=dtype),
                torch.ones(len(keys), dtype=torch.bool))

    def take_faults(self) -> Dict[str, str]:
        return {}

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        """The stored rows for keys (all present), as one tensor on the tier's device."""
        records = torch.empty((len(keys), 2), dtype=torch.int64)
        self.index.gather(keys, records)
        slab_ids = records[:, 0].unique()
        first = self.slabs[int(slab_ids[0])]
        out = torch.empty((len(keys), *first.shape[1:]), dtype=first.dtype, device=self.device)
        for slab_id in slab_ids.tolist():
            mask = records[:, 0] == slab_id
            rows = records[mask, 1].to(self.device)
            out[mask.to(self.device)] = self.slabs[slab_id].index_select(0, rows)
        return out

    def stats(self) -> dict:
        return {"records": self.records, "bytes_indexed": self.bytes, "slabs": len(self.slabs),
                "device": str(self.device), "full": self.is_full}

    def close(self) -> None:
        self.index.close()
        self.slabs.clear()

    def _slab(self, dtype: torch.dtype, item_shape: tuple, extra: int) -> int:
        key = (dtype, item_shape)
        slab_id = self.slab_of.get(key)
        if slab_id is None:
            slab_id = len(self.slabs)
            self.slab_of[key] = slab_id
            self.slabs.append(torch.empty((0, *item_shape), dtype=dtype, device=self.device))
            self.used.append(0)
        slab = self.slabs[slab_id]
        need = self.used[slab_id] + extra
        if need > slab.shape[0]:
            # Doubling keeps the total copying linear in the number of rows stored.
            grown = torch.empty((max(need, 2 * slab.shape[0], 64), *item_shape), dtype=dtype,
                                device=self.device)
            grown[: self.used[slab_id]] = slab[: self.used[slab_id]]
            self.slabs[slab_id] = grown
        return slab_id
