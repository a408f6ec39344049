"""A process of the remote-tier tests (tests/test_remote.py): a cached module over one
local directory and one remote, run on a fixed data set.

    python tests/remote_worker.py CONFIG_JSON

CONFIG: dir, url, items, batch, out (a .pt path: outputs, forward rows), and
optionally first/last (which items), refresh_s, flush (call remote.flush() when done),
barrier (a path prefix: write <prefix>.<rank>, wait for <prefix>.<peer>) or dist_port
(a gloo process group of two DDP ranks on 127.0.0.1, and dist.barrier()), rank, then
(a second pass over other items after the barrier), signal_ready (print "ready" and
sleep before exiting, for a test that kills the process during the upload).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from torchcache_c import torchcache
from torchcache_c import remote as remote_mod

CONFIG = json.loads(sys.argv[1]) if __name__ == "__main__" else {}
FORWARD_ROWS = [0]


@torchcache(persistent=True, persistent_cache_dir=CONFIG.get("dir"),
            persistent_remote=CONFIG.get("url"), remote_refresh_s=CONFIG.get("refresh_s", 0))
class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1234)
        self.w = torch.nn.Parameter(torch.randn(16, generator=gen), requires_grad=False)

    def forward(self, x: torch.Tensor):
        FORWARD_ROWS[0] += len(x)
        # Elementwise only: a row's values never depend on which rows share its batch
        # (a matmul's may, in the last bits), so outputs compare bit for bit.
        y = torch.cat([x * self.w, torch.sin(x) + self.w], 1)
        return {"y": y, "n": (x * x).to(torch.float64)}


def data(n: int) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(99))


def run(net: Net, x: torch.Tensor, first: int, last: int, batch: int):
    ys, ns = [], []
    with torch.no_grad():
        for i in range(first, last, batch):
            out = net(x[i:min(i + batch, last)])
            ys.append(out["y"])
            ns.append(out["n"])
    return torch.cat(ys), torch.cat(ns)


def barrier(prefix: str, rank: int) -> None:
    with open(f"{prefix}.{rank}", "w"):
        pass
    peer = f"{prefix}.{1 - rank}"
    deadline = time.monotonic() + 120
    while not os.path.exists(peer):
        if time.monotonic() > deadline:
            raise TimeoutError("barrier")
        time.sleep(0.02)


def main() -> None:
    cfg = CONFIG
    x = data(cfg["items"])
    net = Net()
    first, last = cfg.get("first", 0), cfg.get("last", cfg["items"])
    y, n = run(net, x, first, last, cfg["batch"])
    result = {"y": y, "n": n, "forward_rows": FORWARD_ROWS[0]}
    if cfg.get("flush"):
        result["flushed"] = remote_mod.flush(60)
    if cfg.get("dist_port"):
        # DDP ranks: the gloo process group's barrier, as a training script has it.
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{cfg['dist_port']}",
                                rank=cfg["rank"], world_size=2)
        dist.barrier()
    elif cfg.get("barrier"):
        barrier(cfg["barrier"], cfg["rank"])
    if cfg.get("then"):
        before = FORWARD_ROWS[0]
        a, b = cfg["then"]
        y2, n2 = run(net, x, a, b, cfg["batch"])
        result.update(y2=y2, n2=n2, forward_rows_then=FORWARD_ROWS[0] - before)
    torch.save(result, cfg["out"])
    if cfg.get("dist_port"):
        import torch.distributed as dist

        dist.destroy_process_group()
    if cfg.get("signal_ready"):
        print("ready", flush=True)
        remote_mod.flush(60)
        time.sleep(60)


if __name__ == "__main__":
    main()
