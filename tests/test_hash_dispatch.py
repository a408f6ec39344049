"""SIMD dispatch: every level this CPU has gives the portable digests on the batch
paths (many items finished together, one-stripe blocks, block sums over threads),
and switching levels is safe while other threads hash."""

import threading

import pytest
import torch

from conftest import SIMD_LEVELS
from torchcache_c import _C, build_info, hash_tensor

# Item sizes in bytes around every boundary of the driver and the kernels: one
# word, one register of four lanes (32 B) and one step of eight (64 B; one-stripe
# items are read in place, the last register of one that ends inside it by a
# masked load), the block finish's 8/16/24/32-lane variants, one stripe (256 B),
# the short blocks that AVX2 hashes in two passes (2..16 stripes, 4 KiB, the
# kernels' itemsN; 1000 B ends in a partial stripe), one block (16 KiB).
ITEM_BYTES = [0, 1, 7, 8, 9, 63, 64, 65, 120, 127, 128, 129, 191, 192, 193, 255, 256, 257,
              300, 384, 511, 512, 513, 1000, 3072, 4095, 4096, 4097, 16383, 16384, 16385,
              40000]
# itemsN reads a partial last stripe in place: whole words by masked loads, the
# last partial word by one load that ends at the item's last byte.  Sizes for
# 2, 3, 15 and 16 stripes and every kind of last stripe: 1 byte, one partial
# word (3 B), whole words only (264, 320, 448), a partial word at the start, in
# the middle and at the end of a register of four words (300 = 256 + 5 words
# + 4 B, 287, 263), a stripe less one byte (511, 767, 4095).
ITEMSN_BYTES = [257, 259, 263, 264, 287, 300, 320, 384, 448, 511, 512, 513, 640, 767, 768,
                3840, 3841, 4000, 4095, 4096]
# Batch sizes around the kernels' groups of items: the AVX2 item finish takes
# groups of 12 (8 in registers, 4 in scalars), then groups of 4, then one at a time;
# AVX2's one-stripe items (items1) and items of 2..16 stripes (itemsN) take passes
# of 16 items (4 groups of 4), then groups of 4, then a group of four whose
# missing items repeat the last one; AVX-512's take passes of 32 items (4 groups
# of 8), then groups of 8, then one group of 8 whose missing items are zeros.
BATCHES = [1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 23, 24, 25, 28, 31, 32, 33, 47, 48,
           49, 65]


def _items(batch: int, nbytes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, nbytes), generator=g, dtype=torch.uint8)


def _portable_one_by_one(x: torch.Tensor, level: str) -> torch.Tensor:
    """Each item alone, at the portable level (the reference driver and kernels);
    leaves `level` active."""
    _C._set_simd("portable")
    try:
        return torch.cat([hash_tensor(x[i:i + 1]) for i in range(x.shape[0])])
    finally:
        _C._set_simd(level)


@pytest.mark.parametrize("nbytes", ITEM_BYTES)
def test_batches_match_portable_items_at_every_level(simd, nbytes):
    for seed, batch in enumerate(BATCHES):
        x = _items(batch, nbytes, seed)
        got = hash_tensor(x)
        assert torch.equal(got, _portable_one_by_one(x, simd)), (simd, nbytes, batch)


@pytest.mark.parametrize("nbytes", [1, 4, 7, 8, 31, 33, 64, 100, 128, 136, 192, 250, 255, 256])
def test_one_stripe_items_of_views_match_portable(simd, nbytes):
    # Compact items whose batch stride is not their length (a slice of wider
    # rows; one whose last item ends where the buffer ends) and items that all
    # lie at one address (stride 0: expand).  items1 reads them in place.
    wide = _items(37, nbytes + 40, 7)
    sliced = wide[:, 3:3 + nbytes]
    assert torch.equal(hash_tensor(sliced), _portable_one_by_one(sliced, simd))
    assert torch.equal(hash_tensor(sliced), hash_tensor(_strided_copy(sliced)))
    tail = wide[:, 40:]
    assert torch.equal(hash_tensor(tail), _portable_one_by_one(tail, simd))
    same = wide[5, :nbytes].expand(21, nbytes)
    got = hash_tensor(same)
    assert torch.equal(got, _portable_one_by_one(same, simd))
    assert len({tuple(r) for r in got.tolist()}) == 1


def _strided_copy(x: torch.Tensor) -> torch.Tensor:
    """The same logical items, each non-compact (every other byte of a wider
    buffer): hashed by the stream path (tc_hash_item), not by the batch kernels."""
    wide = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype)
    view = wide[:, ::2]
    view.copy_(x)
    return view


@pytest.mark.parametrize("nbytes", ITEMSN_BYTES)
def test_multi_stripe_items_match_the_stream_path_and_portable(simd, nbytes):
    # Batches of 1..9 items (groups of four and every remainder) and one pass of
    # 16 and more: the batch kernel (itemsN) against the stream path at this
    # level, and against each item alone at the portable level.
    for seed, batch in enumerate([1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 19, 35]):
        x = _items(batch, nbytes, 100 + seed)
        got = hash_tensor(x)
        assert torch.equal(got, hash_tensor(_strided_copy(x))), (simd, nbytes, batch)
        assert torch.equal(got, _portable_one_by_one(x, simd)), (simd, nbytes, batch)


@pytest.mark.parametrize("nbytes", [257, 300, 511, 768, 4095, 4096])
def test_multi_stripe_items_of_views_match_portable(simd, nbytes):
    # Compact items whose batch stride is not their length (a slice of wider
    # rows, the last item ending where the buffer ends), and items that all lie
    # at one address (stride 0: expand).
    wide = _items(23, nbytes + 40, 9)
    sliced = wide[:, 40:]
    assert torch.equal(hash_tensor(sliced), _portable_one_by_one(sliced, simd))
    assert torch.equal(hash_tensor(sliced), hash_tensor(_strided_copy(sliced)))
    same = wide[5, :nbytes].expand(13, nbytes)
    got = hash_tensor(same)
    assert torch.equal(got, _portable_one_by_one(same, simd))
    assert len({tuple(r) for r in got.tolist()}) == 1


# The AVX-512 item kernels (items1, itemsN) hash eight items side by side, each
# item's lanes eight to a zmm register, the last register that holds data read by
# a masked load: every item length of 1..600 bytes (every end of an item inside a
# register of eight words, in one stripe, two and three), and the edges of 3..17
# stripes.
AVX512_ITEM_BYTES = [*range(1, 601), 767, 768, 769, 1023, 1024, 1025, 2047, 3071, 3072, 3073,
                     3839, 3841, 4095, 4096, 4097]


@pytest.mark.skipif("avx512" not in SIMD_LEVELS, reason="this CPU has no AVX-512F/DQ")
def test_avx512_item_kernels_match_portable_at_every_size_and_remainder():
    # Batches of 1..17 items (no group of eight, one, two, and every remainder),
    # laid out three ways: back to back with the last item ending where the buffer
    # ends, rows of a wider buffer (batch stride != item length; the last item
    # ends at the buffer's end too), and one item repeated at one address (stride
    # 0).  Each at the AVX-512 level against the same batch at the portable one.
    g = torch.Generator().manual_seed(512)
    try:
        for nbytes in AVX512_ITEM_BYTES:
            wide = torch.randint(0, 256, (17, nbytes + 24), generator=g, dtype=torch.uint8)
            for batch in range(1, 18):
                for x in (wide[:batch, :nbytes].contiguous(), wide[17 - batch:, 24:],
                          wide[3, :nbytes].expand(batch, nbytes)):
                    _C._set_simd("avx512")
                    got = hash_tensor(x)
                    _C._set_simd("portable")
                    want = hash_tensor(x)
                    assert torch.equal(got, want), (nbytes, batch, x.stride())
    finally:
        _C._set_simd(build_info()["simd_best"])


def test_multi_stripe_padding_is_not_data(simd):
    # A partial last stripe is zero-padded: an item that ends in zero bytes must
    # still differ from the shorter item without them (the length is hashed), and
    # each byte of the last word must count (no byte lost to the partial load).
    base = _items(1, 300, 3)[0]
    rows = [base[:n] for n in (297, 298, 299, 300)]
    digests = [hash_tensor(r.unsqueeze(0))[0] for r in rows]
    assert len({tuple(d.tolist()) for d in digests}) == 4
    flips = base.repeat(9, 1)
    for i in range(8):
        flips[i + 1, 292 + i] ^= 1
    got = hash_tensor(flips)
    assert torch.equal(got, _portable_one_by_one(flips, simd))
    assert len({tuple(r) for r in got.tolist()}) == 9


def test_zero_padding_lanes_are_data_when_not_zero(simd):
    # One-stripe blocks take the zero lanes from a table; an item whose last
    # words are zero must still differ from a shorter item (the length is hashed)
    # and equal the portable digest.
    x = torch.zeros(9, 256, dtype=torch.uint8)
    for i in range(9):
        x[i, : 28 * i] = 1
    got = hash_tensor(x)
    assert torch.equal(got, _portable_one_by_one(x, simd))
    assert len({tuple(r) for r in got.tolist()}) == 9


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_batches_match_portable(simd, threads):
    # 4 MiB or more is split over threads: one-block items and multi-block items.
    for shape in [(1100, 4096), (70, 65536), (1, 5 << 20)]:
        x = _items(shape[0], shape[1], threads)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            got = hash_tensor(x)
        finally:
            torch.set_num_threads(before)
        _C._set_simd("portable")
        try:
            want = hash_tensor(x)
        finally:
            _C._set_simd(simd)
        assert torch.equal(got, want), (simd, threads, shape)


def test_set_simd_switches_the_active_level():
    for level in SIMD_LEVELS:
        _C._set_simd(level)
        assert build_info()["simd"] == level
    _C._set_simd(build_info()["simd_best"])
    assert build_info()["simd"] == build_info()["simd_best"]


def test_unsupported_level_is_refused_and_changes_nothing():
    levels = ["portable", "avx2", "avx512"]
    missing = levels[len(SIMD_LEVELS):]
    for level in missing:
        with pytest.raises(ValueError, match="does not support"):
            _C._set_simd(level)
        assert build_info()["simd"] == build_info()["simd_best"]


def test_switching_levels_while_other_threads_hash_gives_the_same_digests():
    x = _items(64, 3000, 7)
    want = hash_tensor(x)
    errors = []
    stop = threading.Event()

    def hasher():
        while not stop.is_set():
            if not torch.equal(hash_tensor(x), want):
                errors.append("digest changed")
                return

    workers = [threading.Thread(target=hasher) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for _ in range(300):
            for level in SIMD_LEVELS:
                _C._set_simd(level)
    finally:
        stop.set()
        for w in workers:
            w.join()
        _C._set_simd(build_info()["simd_best"])
    assert not errors
