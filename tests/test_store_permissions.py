"""Who may write what a store reads (issue 12): a directory others may write is
reported (refused under strict), other users' segments are ignored unless
allowed, modes are configurable with unchanged defaults."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from torchcache_c import StorePermissionError
from torchcache_c._C import Store

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import check_served, items_for, keys_for  # noqa: E402

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another uid")


def segments(path) -> list:
    return sorted(Path(path).glob("seg-*.tcs"))


def write_records(path, ids) -> None:
    with Store(str(path)) as s:
        keys = keys_for(ids)
        s.put(keys, items_for(keys, 8))


@as_root
def test_segment_owned_by_another_user_is_ignored_unless_allowed(tmp_path):
    write_records(tmp_path, range(3))
    write_records(tmp_path, range(3, 6))
    os.chown(segments(tmp_path)[0], NOBODY, NOBODY)
    store = Store(str(tmp_path))
    assert sum(store.lookup(keys_for(range(6)))) == 3
    faults = store.take_faults()
    assert "foreign_owner" in faults and "uid 65534" in faults["foreign_owner"]
    shared = Store(str(tmp_path), allow_other_owners=True)
    assert check_served(shared, keys_for(range(6)), 8) == 6
    assert shared.take_faults() == {}


def test_directory_writable_by_others_is_reported_once(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    store = Store(str(cache))
    faults = store.take_faults()
    assert "writable by other users" in faults["insecure"]
    assert store.take_faults() == {}


def test_strict_refuses_a_directory_writable_by_others(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    with pytest.raises(StorePermissionError, match="writable by other users"):
        Store(str(cache), strict=True)
    with pytest.raises(PermissionError):
        Store(str(cache), strict=True)


def test_sticky_or_private_directories_are_fine_under_strict(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    Store(str(sticky), strict=True)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert Store(str(private), strict=True).take_faults() == {}


def test_parents_created_writable_by_others_are_reported(tmp_path):
    old = os.umask(0)
    try:
        store = Store(str(tmp_path / "made" / "here"), dir_mode=0o777)
    finally:
        os.umask(old)
    assert str(tmp_path / "made") in store.take_faults()["insecure"]


def test_file_and_directory_modes_are_configurable_with_unchanged_defaults(tmp_path):
    old = os.umask(0o022)
    try:
        write_records(tmp_path / "default", range(1))
        with Store(str(tmp_path / "private" / "x"), file_mode=0o600, dir_mode=0o700) as s:
            s.put(keys_for([1]), items_for(keys_for([1]), 8))
    finally:
        os.umask(old)
    (default,) = segments(tmp_path / "default")
    assert stat.S_IMODE(default.stat().st_mode) == 0o644  # 0666 minus the umask
    (private,) = segments(tmp_path / "private" / "x")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
