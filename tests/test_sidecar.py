"""torchcache_c/sidecar.py: layout sidecars cannot be redirected or break a reader."""

from __future__ import annotations

import json
import os

from torchcache_c.sidecar import (LAYOUT_FORMAT, layout_is_valid, read_json_validated,
                                  write_json_atomic)

LAYOUT = {"format": LAYOUT_FORMAT, "spec": {"tuple": ["T", {"dict": [["half", "T"]]}]},
          "dtypes": ["float32", "float16"]}


def test_write_then_read_round_trips_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "layout-ab.json")
    write_json_atomic(path, LAYOUT)
    assert read_json_validated(path, layout_is_valid) == LAYOUT
    assert os.listdir(tmp_path) == ["layout-ab.json"]


def test_planted_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    path = tmp_path / "layout-ab.json"
    os.symlink(victim, path)
    assert read_json_validated(str(path), layout_is_valid) is None  # links are not read
    write_json_atomic(str(path), LAYOUT)
    assert victim.read_text() == "keep me"
    assert not path.is_symlink() and json.loads(path.read_text()) == LAYOUT


def test_temporary_names_are_unpredictable(tmp_path, monkeypatch):
    # The old writer used .<name>.<pid>.<tid>.tmp: a link planted under that name
    # was followed.  Plant links under every name that scheme could pick.
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    for tid in range(4):
        os.symlink(victim, tmp_path / f".layout-ab.json.{os.getpid()}.{tid}.tmp")
    write_json_atomic(str(tmp_path / "layout-ab.json"), LAYOUT)
    assert victim.read_text() == "keep me"


def test_unreadable_or_malformed_sidecars_read_as_none(tmp_path):
    path = tmp_path / "layout-ab.json"
    assert read_json_validated(str(path), layout_is_valid) is None  # missing
    for content in ["[]", "{", '{"format": "torchcache_c-layout-1"}', "null",
                    json.dumps({**LAYOUT, "dtypes": ["float32"]}),  # leaves != dtypes
                    json.dumps({**LAYOUT, "spec": {"set": ["T", "T"]}}),
                    json.dumps({**LAYOUT, "format": "other"}),
                    "[" * 100000 + "]" * 100000]:
        path.write_text(content)
        assert read_json_validated(str(path), layout_is_valid) is None, content[:40]
    os.unlink(path)
    os.mkfifo(path)  # a FIFO would block a plain open
    assert read_json_validated(str(path), layout_is_valid) is None


def test_oversized_sidecar_is_not_parsed(tmp_path):
    path = tmp_path / "layout-ab.json"
    path.write_text(" " * (2 << 20) + json.dumps(LAYOUT))
    assert read_json_validated(str(path), layout_is_valid) is None
