"""Shared by the multi-process tests and the processes they start (DDP ranks,
DataLoader workers, forked children).

The cached module is elementwise (multiply, add, relu: each result is exactly
rounded), so an item's output does not depend on which batch computed it and a
served output can be compared bit for bit with the uncached module's.
"""

from __future__ import annotations

import os
import socket

import torch

from torchcache_c import torchcache

FEATURES = 16


class Elementwise(torch.nn.Module):
    """Counts its forward calls and items per process."""

    forward_calls = 0
    forward_items = 0

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.register_buffer("weight", torch.randn(FEATURES, generator=g))
        self.register_buffer("bias", torch.randn(FEATURES, generator=g))

    def forward(self, x):
        Elementwise.forward_calls += 1
        Elementwise.forward_items += x.shape[0]
        return self.compute(x)

    def compute(self, x):
        return torch.relu(x * self.weight + self.bias) * 0.5


def cached(cache_dir=None, persistent=True, module_hash=None):
    """The cached module (an instance of a fresh decoration, same key everywhere unless
    module_hash names a store of its own)."""
    kwargs = {"persistent": persistent, "persistent_module_hash": module_hash}
    if cache_dir is not None:
        kwargs["persistent_cache_dir"] = str(cache_dir)
    return torchcache(**kwargs)(Elementwise)().eval()


def reference(x: torch.Tensor) -> torch.Tensor:
    """The uncached module's output (without counting a forward call)."""
    with torch.no_grad():
        return Elementwise().compute(x)


def inputs(ids) -> torch.Tensor:
    """Deterministic (N, FEATURES) inputs for integer item ids, in exact arithmetic."""
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1, 1)
    j = torch.arange(FEATURES, dtype=torch.int64)
    return ((ids * 2654435761 + j * 40503) % 65521).to(torch.float32) / 65521.0 - 0.5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_rank(rank: int, world: int, port: int, cache_dir: str, shard: int) -> None:
    """One DDP rank: compute and store shard `rank`, barrier, then ask for every
    shard; no forward may run and every output must be exact."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    Elementwise.forward_calls = 0  # a forked rank inherits the parent's count
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        model = cached(cache_dir)
        with torch.no_grad():
            mine = inputs(range(rank * shard, (rank + 1) * shard))
            assert torch.equal(model(mine), reference(mine))
            assert Elementwise.forward_calls == 1
            dist.barrier()
            everything = inputs(range(world * shard))
            out = model(everything)
        assert Elementwise.forward_calls == 1, \
            f"rank {rank}: forward ran for items other ranks stored"
        assert torch.equal(out, reference(everything)), f"rank {rank}: wrong outputs"
        stats = model.cache_instance.stats()
        assert stats["hits"] == world * shard and stats["misses"] == shard, stats
        dist.barrier()
    finally:
        dist.destroy_process_group()


class CachedBatches(torch.utils.data.Dataset):
    """Item i is the cached module's output for inputs(8i .. 8i+7), with the
    number of forward calls it took in this process."""

    def __init__(self, model, n: int):
        self.model = model
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        before = Elementwise.forward_calls
        with torch.no_grad():
            out = self.model(inputs(range(8 * i, 8 * i + 8)))
        return out, Elementwise.forward_calls - before, os.getpid()
