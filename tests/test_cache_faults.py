"""A store fault never fails the cached call (issue 12): the rows it hits are
computed by forward, the outputs equal the uncached module's, and each kind of
fault is logged once."""
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from torchcache_c import torchcache


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(6, 4)
        self.lin.weight.data = torch.randn(4, 6, generator=g)
        self.lin.bias.data = torch.randn(4, generator=g)
        self.requires_grad_(False)
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.lin(x).tanh()


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def cached(tmp_path):
    return torchcache(persistent=True, persistent_cache_dir=str(tmp_path))(Encoder)()


def listen():
    handler = Records()
    logging.getLogger("torchcache_c").addHandler(handler)
    return handler


def test_segment_truncated_under_a_cached_module_recomputes_its_items(tmp_path):
    m, x = cached(tmp_path), torch.randn(8, 6)
    expected = Encoder()(x)
    with torch.no_grad():
        m(x)
        assert m.sizes == [8]
        m(x)  # every record read (and verified) once
        assert m.sizes == [8]
        for seg in Path(tmp_path).rglob("seg-*.tcs"):
            os.truncate(seg, 0)
        handler = listen()
        try:
            first = m(x)
            second = m(x[:3])
        finally:
            logging.getLogger("torchcache_c").removeHandler(handler)
    assert torch.equal(first, expected) and torch.equal(second, expected[:3])
    assert m.sizes[1] == 8  # all of them ran forward
    faults = [msg for msg in handler.messages if "store fault" in msg]
    assert len(faults) == 1 and "short_read" in faults[0]


def test_cache_directory_removed_between_calls_runs_forward(tmp_path):
    m, x = cached(tmp_path / "c"), torch.randn(8, 6)
    expected = Encoder()(x)
    with torch.no_grad():
        m(x[:4])
        shutil.rmtree(tmp_path / "c")
        handler = listen()
        try:
            out = m(x)
            again = m(x[4:])
        finally:
            logging.getLogger("torchcache_c").removeHandler(handler)
    assert torch.allclose(out, expected) and torch.allclose(again, expected[4:])
    assert any("directory" in msg for msg in handler.messages)
