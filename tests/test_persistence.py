"""The persistent tier across processes, the private temporary directory, logging."""
import io
import json
import logging
import os

from _helpers import run_python

MODEL = """
import json, torch, torch.nn as nn
from torchcache_c import torchcache
calls = []

@torchcache(persistent=True, persistent_cache_dir={cache!r})
class Enc(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(5, 3)
        self.lin.weight.data = torch.randn(3, 5, generator=g)
        self.lin.bias.data = torch.randn(3, generator=g)
        self.requires_grad_(False)

    def forward(self, x):
        calls.append(len(x))
        y = self.lin(x)
        return y, {{"half": y.half()}}

x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
m = Enc()
with torch.no_grad():
    y, d = m(x)
print(json.dumps({{"calls": calls, "y": y.tolist(), "half": d["half"].float().tolist(),
                   "dtype": str(d["half"].dtype), "dir": str(m.cache_instance.cache_dir)}}))
"""


def test_second_process_serves_every_item_without_forward(tmp_path):
    code = MODEL.format(cache=str(tmp_path))
    first = json.loads(run_python(code))
    second = json.loads(run_python(code))
    assert first["calls"] == [6] and second["calls"] == []
    assert second["y"] == first["y"] and second["half"] == first["half"]
    assert second["dtype"] == "torch.float16"
    assert os.path.dirname(first["dir"]) == str(tmp_path)


def test_private_temporary_directory_is_removed_at_exit():
    out = run_python("""
        import os, stat, torch
        from torchcache_c import torchcache

        @torchcache(persistent=True)
        def f(x):
            return x + 1

        f(torch.ones(2, 2))
        parent = f.cache_instance.cache_dir.parent
        print(parent, oct(stat.S_IMODE(os.stat(parent).st_mode)), os.path.isdir(parent))
    """)
    parent, mode, existed = out.split()
    assert existed == "True" and mode == "0o700"
    assert not os.path.exists(parent)


def test_set_logger_config_configures_only_the_library_logger():
    import torchcache_c

    root_handlers = list(logging.getLogger().handlers)
    stream = io.StringIO()
    torchcache_c.set_logger_config(level=logging.INFO, fmt="%(levelname)s %(message)s",
                                   stream=stream)
    try:
        logging.getLogger("torchcache_c").info("hello")
        assert stream.getvalue() == "INFO hello\n"
        assert logging.getLogger().handlers == root_handlers
    finally:
        torchcache_c.set_logger_config(level=logging.WARNING)


def test_log_level_environment_variable_is_read_at_import(tmp_path):
    log = tmp_path / "tc.log"
    out = run_python("""
        import logging, torchcache_c
        logger = logging.getLogger("torchcache_c")
        print(logger.level == logging.DEBUG, logging.getLogger().level)
        logger.debug("to the file")
    """, env={"TORCHCACHE_LOG_LEVEL": "DEBUG", "TORCHCACHE_LOG_FILE": str(log)})
    assert out.split() == ["True", str(logging.WARNING)]
    assert "to the file" in log.read_text()
