"""Shared by the store tests and the writer processes they start.

Every item's content is derived from its key, so a reader can check any record
it is served without knowing which writer stored it or when.
"""

from __future__ import annotations

import sys

import torch

from torchcache_c._C import Store


def keys_for(ids, salt: int = 0) -> torch.Tensor:
    """Keys (N, 2) for integer ids: key = (id, id * 31 + salt)."""
    ids = torch.as_tensor(list(ids), dtype=torch.int64)
    return torch.stack([ids, ids * 31 + salt], dim=1).contiguous()


def items_for(keys: torch.Tensor, numel: int) -> torch.Tensor:
    """Item content (N, numel) int64 that depends only on each key."""
    j = torch.arange(numel, dtype=torch.int64)
    return (keys[:, :1] * 1_000_003 + j * (keys[:, 1:2] | 1)).contiguous()


def check_served(store: Store, keys: torch.Tensor, numel: int) -> int:
    """Gathers every key the store reports present and asserts its content is
    exact.  Returns how many were present."""
    present = torch.tensor(list(store.lookup(keys)), dtype=torch.bool)
    hit = keys[present].contiguous()
    dest = torch.full((hit.shape[0], numel), -1, dtype=torch.int64)
    store.gather(hit, dest)
    assert torch.equal(dest, items_for(hit, numel))
    return int(present.sum())


def writer_main(argv) -> None:
    """python store_helpers.py DIR FIRST COUNT BATCH NUMEL [LOOP]: put ids
    FIRST..FIRST+COUNT in batches (forever if LOOP, for kill tests)."""
    path, first, count, batch, numel = argv[0], *map(int, argv[1:5])
    loop = len(argv) > 5 and argv[5] == "loop"
    store = Store(path, refresh_ms=0)
    print("ready", flush=True)
    salt = 0
    while True:
        for start in range(first, first + count, batch):
            keys = keys_for(range(start, min(start + batch, first + count)), salt)
            store.put(keys, items_for(keys, numel))
            store.lookup(keys)
        if not loop:
            break
        salt += 1
    store.close()


if __name__ == "__main__":
    writer_main(sys.argv[1:])
