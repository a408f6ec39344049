"""The persisted index of a segment (docs/format.md, section 9; csrc/store_index.c).

An index file lists the records of a prefix of a segment so that a fresh open
need not scan it.  It is a hint: every entry is checked in full at first use,
so a stale, damaged or planted index costs misses (or a scan), never a wrong
output.  The files are built here from docs/format.md, independently of the C
writer, whose output the first test compares them with.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import sys
from pathlib import Path

import pytest
import torch

from torchcache_c import _C
from torchcache_c._C import Store

sys.path.insert(0, str(Path(__file__).parent))
from hash_spec import M64, _block_terms, fmix64  # noqa: E402,F401
from hash_spec import key as spec_key  # noqa: E402
from store_helpers import check_served, items_for, keys_for  # noqa: E402

NUMEL = 4          # 32-byte items: small records, the kind that gets an index
RECORD = 128 + 64  # their record size on disk
N = 2048           # records per segment (an index needs at least 1024)
GAMMA = 0x9E3779B97F4A7C15
V1_FIXTURE = Path(__file__).parent / "data" / "segment-v1"


def segments(path) -> list:
    return sorted(Path(path).glob("seg-*.tcs"))


def index_of(seg: Path) -> Path:
    return seg.with_name("idx-" + seg.name[4:-4] + ".tci")


def indexes(path) -> list:
    return sorted(Path(path).glob("idx-*.tci"))


def segment_id(name: str) -> int:
    h = 0xCBF29CE484222325
    for c in name.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return fmix64(h)


def block_digest(block: bytes):
    """tch128-v1's block digest (h1, h2) (docs/hash.md, section 3): the
    per-block sums of hash_spec._block_terms before the block index is keyed in."""
    a = [spec_key(192 + j) for j in range(32)]
    c = [spec_key(224 + j) for j in range(32)]
    nstripes = (len(block) + 255) // 256
    padded = block + bytes(nstripes * 256 - len(block))
    for s in range(nstripes):
        for j in range(32):
            w = int.from_bytes(padded[s * 256 + 8 * j:s * 256 + 8 * j + 8], "little")
            k1 = w ^ spec_key(j) ^ spec_key(64 + s)
            k2 = w ^ spec_key(32 + j) ^ spec_key(128 + s)
            a[j] = (a[j] + w + (k1 & 0xFFFFFFFF) * (k1 >> 32)) & M64
            c[j] = (c[j] + (k2 & 0xFFFFFFFF) * (k2 >> 32)) & M64
    h1 = sum(fmix64((a[j] + fmix64(c[j] ^ spec_key(256 + j))) & M64) for j in range(32)) & M64
    h2 = sum(fmix64((c[j] + fmix64(a[j] ^ spec_key(288 + j))) & M64) for j in range(32)) & M64
    return h1, h2


def entries_sum(data: bytes) -> int:
    s = fmix64(0x746369656E74 ^ len(data))
    for off in range(0, len(data), 16384):
        h1, h2 = block_digest(data[off:off + 16384])
        s = (fmix64(s ^ h1) + h2) & M64
    return s


def encode_index(seg_name: str, ino: int, covered: int, entries, corrupt: int = 0) -> bytes:
    """An index file as docs/format.md, section 9 describes it."""
    body = b"".join(struct.pack("<4Q", *e) for e in entries)
    sid = segment_id(seg_name)
    words = [0x31494354 | 1 << 32 | 32 << 48, sid, ino, covered, len(entries), corrupt,
             entries_sum(body)]
    a = fmix64(0x746369686472 ^ sid)
    for w in words:
        a = (fmix64(a ^ w) + GAMMA) & M64
    return struct.pack("<8Q", *words, a) + body


def decode_index(data: bytes):
    words = struct.unpack_from("<8Q", data)
    entries = [struct.unpack_from("<4Q", data, 64 + 32 * i) for i in range(words[4])]
    return words, entries


def write_segment(path, first: int = 0, count: int = N) -> torch.Tensor:
    keys = keys_for(range(first, first + count))
    with Store(str(path)) as w:
        assert w.put(keys, items_for(keys, NUMEL)) == count
    return keys


def test_writer_leaves_an_index_that_matches_the_format(tmp_path):
    keys = write_segment(tmp_path)
    (seg,) = segments(tmp_path)
    data = index_of(seg).read_bytes()
    words, entries = decode_index(data)
    assert words[1] == segment_id(seg.name) and words[2] == seg.stat().st_ino
    assert words[3] == seg.stat().st_size == N * RECORD and words[4] == N
    assert sorted(e[2] for e in entries) == list(range(0, N * RECORD, RECORD))
    assert {(e[0], e[1]) for e in entries} == {tuple(k) for k in keys.tolist()}
    assert all(e[3] == NUMEL * 8 for e in entries)
    # the reader's order: the hash whose high bits pick a key's slot
    order = [fmix64(e[0] ^ (e[1] * GAMMA & M64)) >> 48 for e in entries]
    assert order == sorted(order)
    # the checksums as the document defines them
    assert encode_index(seg.name, words[2], words[3], entries) == data
    store = Store(str(tmp_path))
    assert store.stats()["records"] == N
    assert check_served(store, keys, NUMEL) == N
    assert store.verify()["corrupt"] == 0


def test_fresh_open_trusts_the_prefix_the_index_covers(tmp_path):
    """The index is what a fresh open reads for [0, covered): a valid index that
    lists fewer records leaves the others unindexed (so the index is used), and
    the records past `covered` are scanned (an index older than the segment)."""
    keys = write_segment(tmp_path)
    (seg,) = segments(tmp_path)
    ino = seg.stat().st_ino
    _, entries = decode_index(index_of(seg).read_bytes())
    by_offset = sorted(entries, key=lambda e: e[2])
    # lists records 0..999 of a prefix of 1200 records: 200 unlisted in the prefix
    index_of(seg).write_bytes(encode_index(seg.name, ino, 1200 * RECORD, by_offset[:1000]))
    store = Store(str(tmp_path))
    assert store.stats()["records"] == 1000 + (N - 1200)
    listed = {(e[0], e[1]) for e in by_offset[:1000]} | {(e[0], e[1]) for e in by_offset[1200:]}
    assert check_served(store, keys, NUMEL) == len(listed)
    present = store.lookup(keys)
    assert [bool(p) for p in present] == [tuple(k) in listed for k in keys.tolist()]


@pytest.mark.parametrize("damage", ["truncated", "entry_flip", "header_flip", "empty",
                                    "other_segment", "covers_more", "symlink", "fifo"])
def test_damaged_or_foreign_index_is_ignored_and_rewritten(tmp_path, damage):
    keys = write_segment(tmp_path / "a")
    (seg,) = segments(tmp_path / "a")
    idx = index_of(seg)
    data = idx.read_bytes()
    if damage == "truncated":
        idx.write_bytes(data[:len(data) - 32])
    elif damage == "entry_flip":
        idx.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "header_flip":
        idx.write_bytes(data[:30] + bytes([data[30] ^ 0x80]) + data[31:])
    elif damage == "empty":
        idx.write_bytes(b"")
    elif damage == "other_segment":
        write_segment(tmp_path / "b", first=N)
        (other,) = segments(tmp_path / "b")
        shutil.copyfile(index_of(other), idx)
    elif damage == "covers_more":
        words, entries = decode_index(data)
        idx.write_bytes(encode_index(seg.name, words[2], words[3] + RECORD, entries))
    elif damage == "symlink":
        target = tmp_path / "elsewhere.tci"
        target.write_bytes(data)
        idx.unlink()
        idx.symlink_to(target)
    elif damage == "fifo":
        idx.unlink()
        os.mkfifo(idx)
    store = Store(str(tmp_path / "a"))  # scans: every record, never a wrong one
    assert store.stats()["records"] == N
    assert check_served(store, keys, NUMEL) == N
    if damage == "symlink":  # never followed
        assert (tmp_path / "elsewhere.tci").read_bytes() == data
    store.close()
    # this process wrote the segment and still runs, so no reader replaces the
    # index (its writer might append); a new writer's close would
    assert check_served(Store(str(tmp_path / "a")), keys, NUMEL) == N


def test_planted_index_pointing_at_wrong_bytes_only_costs_misses(tmp_path):
    """A checksummed index whose entries point at other records, inside payloads,
    or past them, with other keys or sizes: each such row is a miss (its header,
    bound to segment and offset, or its key or size does not match)."""
    keys = write_segment(tmp_path)
    (seg,) = segments(tmp_path)
    ino = seg.stat().st_ino
    _, entries = decode_index(index_of(seg).read_bytes())
    by_offset = sorted(entries, key=lambda e: e[2])
    planted = []
    for i, (k0, k1, off, raw) in enumerate(by_offset):
        kind = i % 5
        if kind == 0:
            planted.append((k0, k1, (off + RECORD) % (N * RECORD), raw))  # the next record
        elif kind == 1:
            planted.append((k0, k1, off + 64, raw))                       # inside a payload
        elif kind == 2:
            planted.append((k0 ^ 1, k1, off, raw))                        # another key
        elif kind == 3:
            planted.append((k0, k1, off, raw * 2))                        # another size
        else:
            planted.append((k0, k1, off, raw))                            # right
    index_of(seg).write_bytes(encode_index(seg.name, ino, N * RECORD, planted))
    store = Store(str(tmp_path))
    served = check_served(store, keys, NUMEL)  # asserts every served row is exact
    assert served == len([i for i in range(N) if i % 5 == 4])
    dest = torch.full((N, NUMEL), -1, dtype=torch.int64)
    mask = store.gather(keys, dest)
    ok = torch.tensor(list(mask), dtype=torch.bool)
    assert torch.equal(dest[ok], items_for(keys[ok], NUMEL))


def test_segment_replaced_under_its_name_ignores_the_old_index(tmp_path):
    write_segment(tmp_path)
    (seg,) = segments(tmp_path)
    old = decode_index(index_of(seg).read_bytes())[0]
    # another segment's bytes under this name: not bound to it, none verifies
    scratch = tmp_path / "x"
    write_segment(scratch, first=N)
    (other,) = segments(scratch)
    copy = tmp_path / "copy.tmp"
    shutil.copyfile(other, copy)
    os.rename(copy, seg)
    assert seg.stat().st_ino != old[2]
    store = Store(str(tmp_path))
    assert store.stats()["records"] == 0
    assert sum(store.lookup(keys_for(range(0, 2 * N)))) == 0


def test_truncated_segment_and_zeroed_range_never_serve_wrong_bytes(tmp_path):
    """Power-loss images: a segment shorter than its index covers (the index is
    refused, the scan finds what is left), and zeros inside the covered prefix
    with the length kept (those records are misses, the rest served)."""
    keys = write_segment(tmp_path)
    (seg,) = segments(tmp_path)
    good = seg.read_bytes()
    index = index_of(seg).read_bytes()
    for cut in (RECORD * 700 + 77, RECORD * 1500, 4096):
        seg.write_bytes(good[:cut])  # same inode
        index_of(seg).write_bytes(index)
        store = Store(str(tmp_path))
        assert check_served(store, keys, NUMEL) == cut // RECORD
        store.close()
    seg.write_bytes(good[:8192] + bytes(8192) + good[16384:])
    index_of(seg).write_bytes(index)
    store = Store(str(tmp_path))
    damaged = {i for i in range(N) if i * RECORD + RECORD > 8192 and i * RECORD < 16384}
    assert check_served(store, keys, NUMEL) == N - len(damaged)
    assert store.verify()["corrupt"] >= 1


def test_version_1_directory_opens_without_an_index(tmp_path):
    shutil.copytree(V1_FIXTURE, tmp_path / "v1")
    store = Store(str(tmp_path / "v1"))
    assert check_served(store, keys_for(range(8)), 16) == 8
    store.close()
    assert indexes(tmp_path / "v1") == []


def test_large_records_get_no_index(tmp_path):
    """Records of 512 bytes or more are verified by the scan while it reads them;
    an index would make their first use read them again (format.md, section 9)."""
    keys = keys_for(range(N))
    with Store(str(tmp_path)) as w:
        w.put(keys, items_for(keys, 128))
    assert indexes(tmp_path) == []


def test_index_owned_by_another_user_is_ignored(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    keys = write_segment(tmp_path)
    (seg,) = segments(tmp_path)
    words, entries = decode_index(index_of(seg).read_bytes())
    index_of(seg).write_bytes(encode_index(seg.name, words[2], words[3], entries[:1024]))
    os.chown(index_of(seg), 12345, 12345)
    store = Store(str(tmp_path))
    assert store.stats()["records"] == N  # scanned, not the 1024 the file lists
    assert check_served(store, keys, NUMEL) == N
    team = Store(str(tmp_path), allow_other_owners=True)
    assert team.stats()["records"] == 1024


def test_reader_writes_the_index_of_a_killed_writer(tmp_path):
    """A writer killed before close leaves no index; the next reader scans, and
    writes one since that writer cannot append any more; the one after reads it.
    While the writer runs, readers write none (it may still append)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            st = Store(str(tmp_path))
            k = keys_for(range(N))
            st.put(k, items_for(k, NUMEL))
            os.write(w, b"x")
            signal.pause()
        finally:
            os._exit(1)
    assert os.read(r, 1) == b"x"
    live = Store(str(tmp_path))
    assert live.stats()["records"] == N and indexes(tmp_path) == []
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    keys = keys_for(range(N))
    reader = Store(str(tmp_path))
    assert check_served(reader, keys, NUMEL) == N
    (idx,) = indexes(tmp_path)
    assert decode_index(idx.read_bytes())[0][4] == N
    assert check_served(Store(str(tmp_path)), keys, NUMEL) == N
    assert check_served(live, keys, NUMEL) == N


def test_compaction_indexes_its_merged_segment_and_removes_old_indexes(tmp_path):
    def child(first):
        pid = os.fork()
        if pid == 0:
            try:
                write_segment(tmp_path, first=first)
            finally:
                os._exit(0)
        return pid
    for pid in [child(0), child(N)]:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert len(indexes(tmp_path)) == 2
    before = Store(str(tmp_path))  # open across the compaction
    r = _C.compact(str(tmp_path), min_idle_s=0)
    assert r["removed"] == 2 and r["records"] == 2 * N
    (merged,) = segments(tmp_path)
    (idx,) = indexes(tmp_path)
    assert idx == index_of(merged)
    words, entries = decode_index(idx.read_bytes())
    assert words[3] == merged.stat().st_size and words[4] == 2 * N
    keys = keys_for(range(2 * N))
    assert check_served(Store(str(tmp_path)), keys, NUMEL) == 2 * N
    assert check_served(before, keys, NUMEL) == 2 * N
