"""Demo: train a linear head on a frozen backbone, without and with torchcache_c.

    python -m torchcache_c.demo [--persistent-dir DIR] [--epochs N]

The backbone is a small conv net built from torch.nn (random frozen weights, no
downloads) producing 256-d features from 3x32x32 images.  The first cached epoch
computes and stores every feature; later epochs are served from the cache.  With
--persistent-dir, a second run of the demo is served from disk from its first epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn

from . import torchcache


class Backbone(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        torch.manual_seed(0)  # same frozen weights in every run, so disk entries match
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 256, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def _progress(batches: Iterable, total: int, label: str) -> Iterable:
    try:
        from tqdm import tqdm
    except ImportError:
        for i, batch in enumerate(batches, 1):
            yield batch
            bar = "#" * (30 * i // total)
            print(f"\r{label} [{bar:<30}] {i}/{total}", end="", file=sys.stderr, flush=True)
        print("\r" + " " * (len(label) + 45) + "\r", end="", file=sys.stderr, flush=True)
        return
    yield from tqdm(batches, total=total, desc=label, leave=False)


def _train(backbone: nn.Module, data: torch.Tensor, labels: torch.Tensor, epochs: int,
           name: str, hit_rate: Optional[Callable[[], float]] = None) -> list:
    torch.manual_seed(1)
    head = nn.Linear(256, 10)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(data))
        batches = [order[i:i + 64] for i in range(0, len(data), 64)]
        loss_sum = 0.0
        for idx in _progress(batches, len(batches), f"{name} epoch {epoch + 1}"):
            with torch.no_grad():
                features = backbone(data[idx])
            loss = nn.functional.cross_entropy(head(features), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
        times.append(time.perf_counter() - start)
        extra = f"  hit rate {hit_rate():6.1%}" if hit_rate else ""
        print(f"{name:>9} epoch {epoch + 1}: {times[-1]:6.2f} s  loss {loss_sum / len(data):.4f}"
              f"{extra}")
    return times


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persistent-dir", help="cache directory kept between runs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--items", type=int, default=1024)
    args = parser.parse_args(argv)

    g = torch.Generator().manual_seed(2)
    data = torch.randn(args.items, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (args.items,), generator=g)

    plain = _train(Backbone(), data, labels, args.epochs, "uncached")

    options = {"persistent": args.persistent_dir is not None,
               "persistent_cache_dir": args.persistent_dir}
    cached_backbone = torchcache(**options)(Backbone)()
    cache = cached_backbone.cache_instance
    seen = {"hits": 0, "misses": 0}

    def epoch_hit_rate() -> float:
        stats = cache.stats()
        hits, misses = stats["hits"] - seen["hits"], stats["misses"] - seen["misses"]
        seen.update(hits=stats["hits"], misses=stats["misses"])
        return hits / max(1, hits + misses)

    cached = _train(cached_backbone, data, labels, args.epochs, "cached", epoch_hit_rate)
    print(f"\ntotal: uncached {sum(plain):.2f} s, cached {sum(cached):.2f} s, "
          f"speed-up x{sum(plain) / sum(cached):.1f} "
          f"(epochs after the first: x{sum(plain[1:]) / max(sum(cached[1:]), 1e-9):.1f})")
    if args.persistent_dir:
        print(f"cache directory: {cache.cache_dir} ({cache.stats()['persistent_bytes']} bytes); "
              "run again to see disk hits from the first epoch")


if __name__ == "__main__":
    main()
