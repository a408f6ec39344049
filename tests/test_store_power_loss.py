"""Power-loss simulator (issue 12; the analogue of SQLite's test6.c and
LevelDB/RocksDB's DropUnsyncedFileData): crash images of a directory written
by several writers (a writer never fsyncs, so after a power cut any page of a
segment may be lost, zeroed, garbage or an older page, and a file may be
missing or cut short), each opened by a fresh reader.  Pass criteria: no byte
served that a writer did not write for that key, and every record whose bytes
all survived is served.

POWER_LOSS_IMAGES (default 200) sets how many images one run builds."""

from __future__ import annotations

import os
import random
import shutil
import struct
import sys
from pathlib import Path

import torch

from torchcache_c._C import Store

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import fork_writer, items_for, keys_for  # noqa: E402

IMAGES = int(os.environ.get("POWER_LOSS_IMAGES", "200"))
PAGE = 4096
NUMEL = 100  # 800-byte items: several records per page, records across page edges
WRITERS, PER_WRITER = 3, 60


def records_of(data: bytes):
    """(key, offset, total) of every record of an undamaged segment."""
    out, off = [], 0
    while off + 128 <= len(data):
        k0, k1 = struct.unpack_from("<qq", data, off + 8)
        stored = struct.unpack_from("<Q", data, off + 40)[0]
        total = 128 + (stored + 63) // 64 * 64
        out.append(((k0, k1), off, total))
        off += total
    return out


def crash_image(rng: random.Random, originals: dict, older: dict, dst: Path) -> dict:
    """Writes one damaged copy of the directory into dst; returns, per segment
    name, the byte ranges that are still exactly the writer's (or None when the
    file was dropped)."""
    dst.mkdir()
    intact = {}
    names = sorted(originals)
    for name in names:
        data = bytearray(originals[name])
        if rng.random() < 0.1:
            intact[name] = None  # the directory entry never reached the disk
            continue
        damaged = []
        if rng.random() < 0.5:
            cut = rng.randrange(len(data) + 1)  # the size reached the disk, or less
            del data[cut:]
        if rng.random() < 0.3 and len(data) > 0:
            # the size went out before the data: a zero-filled tail
            grow = rng.randrange(1, 3 * PAGE)
            damaged.append((len(data), len(data) + grow))
            data += bytes(grow)
        for _ in range(rng.randrange(4)):
            if len(data) < PAGE:
                break
            page = rng.randrange(len(data) // PAGE) * PAGE
            kind = rng.choice(["zero", "garbage", "stale_other", "stale_self", "old"])
            if kind == "zero":
                new = bytes(PAGE)
            elif kind == "garbage":
                new = bytes(rng.getrandbits(8) for _ in range(PAGE))
            elif kind == "stale_other":  # a page of another segment (a reused block)
                other = originals[rng.choice(names)]
                src = rng.randrange(max(1, len(other) // PAGE)) * PAGE
                new = other[src:src + PAGE].ljust(PAGE, b"\0")
            elif kind == "stale_self":  # a page of this file from elsewhere
                src = rng.randrange(len(data) // PAGE) * PAGE
                new = bytes(data[src:src + PAGE])
            else:  # the page as it was before the last write to it
                new = older[name][page:page + PAGE].ljust(PAGE, b"\0")
            if new != bytes(data[page:page + PAGE]):
                damaged.append((page, page + PAGE))
            data[page:page + PAGE] = new
        (dst / name).write_bytes(bytes(data))
        intact[name] = (len(data), damaged)
    return intact


def test_crash_images_never_serve_wrong_bytes_and_serve_every_intact_record(tmp_path):
    src = tmp_path / "src"
    pids = [fork_writer(str(src), w * PER_WRITER, PER_WRITER, 7, NUMEL) for w in range(WRITERS)]
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    originals = {p.name: p.read_bytes() for p in src.glob("seg-*.tcs")}
    assert len(originals) == WRITERS
    # "older" pages: the file as it was one put (7 records) earlier, zero beyond
    older = {}
    for name, data in originals.items():
        recs = records_of(data)
        cut = recs[-7][1] if len(recs) > 7 else 0
        older[name] = data[:cut] + bytes(len(data) - cut)
    all_keys = keys_for(range(WRITERS * PER_WRITER))
    expected = items_for(all_keys, NUMEL)
    rng = random.Random(12)
    served_total = intact_total = 0
    for image in range(IMAGES):
        dst = tmp_path / f"img{image}"
        intact = crash_image(rng, originals, older, dst)
        store = Store(str(dst), refresh_ms=0)
        present = torch.tensor(list(store.lookup(all_keys)), dtype=torch.bool)
        dest = torch.full((len(all_keys), NUMEL), -1, dtype=torch.int64)
        served = torch.tensor(list(store.gather(all_keys, dest)), dtype=torch.bool)
        assert torch.equal(dest[served], expected[served]), f"image {image}: wrong bytes"
        assert not (present & ~served).any(), f"image {image}: present but not served"
        must = set()
        for name, state in intact.items():
            if state is None:
                continue
            length, damaged = state
            for key, off, total in records_of(originals[name]):
                end = off + total
                if end <= length and not any(a < end and off < b for a, b in damaged):
                    must.add(key)
        index = {tuple(k): i for i, k in enumerate(all_keys.tolist())}
        missing = [k for k in must if not served[index[k]]]
        assert not missing, f"image {image}: intact records not served: {missing[:5]}"
        served_total += int(served.sum())
        intact_total += len(must)
        store.close()
        shutil.rmtree(dst)
    assert served_total >= intact_total > 0
