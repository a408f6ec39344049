"""Quality of tch128-v2, shown rather than assumed (docs/hash.md, section 8)."""

import torch

from torchcache_c import hash_tensor


def _bits(d: torch.Tensor) -> torch.Tensor:
    """(B, 2) int64 digests -> (B, 128) 0/1 bits."""
    shifts = torch.arange(64, dtype=torch.int64)
    return ((d.unsqueeze(-1) >> shifts) & 1).reshape(d.shape[0], 128)


def _flip_bit(x: torch.Tensor, bit_index: torch.Tensor) -> torch.Tensor:
    """Flip bit bit_index[i] of row i of a uint8 (B, n) tensor."""
    y = x.clone()
    rows = torch.arange(x.shape[0])
    y[rows, bit_index // 8] ^= (1 << (bit_index % 8)).to(torch.uint8)
    return y


def test_avalanche_single_bit_flip_flips_half_the_output_bits():
    g = torch.Generator().manual_seed(1)
    for nbytes in (4, 64, 1000, 20000):
        x = torch.randint(0, 256, (2000, nbytes), generator=g, dtype=torch.uint8)
        flips = torch.randint(0, nbytes * 8, (2000,), generator=g)
        diff = _bits(hash_tensor(x)) ^ _bits(hash_tensor(_flip_bit(x, flips)))
        per_trial = diff.sum(dim=1).double()
        assert abs(per_trial.mean().item() - 64) < 2.0, nbytes
        assert per_trial.min().item() >= 30, nbytes
        rate = diff.double().mean(dim=0)
        assert rate.min().item() > 0.40 and rate.max().item() < 0.60, nbytes


def test_every_single_bit_flip_changes_the_digest():
    g = torch.Generator().manual_seed(2)
    for nbytes in (1, 8, 257, 16385):
        base = torch.randint(0, 256, (1, nbytes), generator=g, dtype=torch.uint8)
        positions = torch.arange(nbytes * 8) if nbytes <= 257 else \
            torch.randperm(nbytes * 8, generator=g)[:4096]
        flipped = _flip_bit(base.expand(len(positions), nbytes).contiguous(), positions)
        d = hash_tensor(flipped)
        d0 = hash_tensor(base)[0]
        assert not (d == d0).all(dim=1).any(), nbytes
        assert len({tuple(r) for r in d.tolist()}) == len(positions)


def test_sparse_and_zero_items_of_every_length_are_distinct():
    digests = set()
    for n in range(0, 1025):
        digests.add(tuple(hash_tensor(torch.zeros(1, n, dtype=torch.uint8))[0].tolist()))
    assert len(digests) == 1025
    n = 600
    sparse = torch.zeros(n, n, dtype=torch.uint8)
    sparse[torch.arange(n), torch.arange(n)] = 1
    d = hash_tensor(sparse)
    assert len({tuple(r) for r in d.tolist()} | digests) == 1025 + n


def test_no_collision_among_a_million_random_items():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (1_000_000, 16), generator=g, dtype=torch.uint8)
    assert torch.unique(x, dim=0).shape[0] == 1_000_000
    d = hash_tensor(x)
    assert torch.unique(d, dim=0).shape[0] == 1_000_000
    # Each 64-bit half alone is collision-free here too.
    assert torch.unique(d[:, 0]).shape[0] == 1_000_000
    assert torch.unique(d[:, 1]).shape[0] == 1_000_000


def test_no_collision_among_near_duplicates():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(1, 768, generator=g)
    items = base.repeat(100_000, 1)
    rows = torch.arange(100_000)
    cols = rows % 768
    items[rows, cols] += (rows // 768 + 1).float() * 1e-3
    assert torch.unique(items, dim=0).shape[0] == 100_000
    d = hash_tensor(items)
    assert torch.unique(d, dim=0).shape[0] == 100_000
