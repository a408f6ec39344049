"""Shared by the store tests and the writer processes they start.

Every item's content is derived from its key, so a reader can check any record
it is served without knowing which writer stored it or when.
"""

from __future__ import annotations

import os
import sys

import torch

from torchcache_c._C import Store


def dir_descriptors(path) -> int:
    """How many of this process's descriptors are the directory `path` (one closed
    while /proc/self/fd is read, the listing's own, is skipped)."""
    want = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == want
        except OSError:
            pass
    return count


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
    assert store.gather(hit, dest) == b"\x01" * hit.shape[0]
    assert torch.equal(dest, items_for(hit, numel))
    return int(present.sum())


def write_items(path: str, first: int, count: int, batch: int, numel: int,
                loop: bool = False) -> None:
    """Puts ids first..first+count in batches (forever with new salts if loop,
    for the kill tests), looking each batch up again as a cache would."""
    store = Store(path, refresh_ms=0)
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


def fork_writer(*args, **kwargs) -> int:
    """Runs write_items in a forked child (no interpreter start-up); returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # The parent's OpenMP pool does not survive fork; compute in this thread.
            torch.set_num_threads(1)
            write_items(*args, **kwargs)
            code = 0
        finally:
            os._exit(code)
    return pid


if __name__ == "__main__":
    # python store_helpers.py DIR FIRST COUNT BATCH NUMEL
    write_items(sys.argv[1], *map(int, sys.argv[2:6]))
