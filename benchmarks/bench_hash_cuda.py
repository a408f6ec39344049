"""CUDA hash throughput against torch's device-to-device copy of the same bytes.

    python benchmarks/bench_hash_cuda.py [--batch 256] [--repeats 9] [--device cuda:0]

Hashes a (batch, 3, 224, 224) float32 CUDA batch with the embedded kernels
(_C.hash_into on torch's current stream, so a missing kernel fails loudly instead
of falling back to the host) and times y.copy_(x) in the same run.  Times are
CUDA events around each call, medians of --repeats runs; GB/s counts bytes read.
The hash call includes its digest copy to the host and the stream sync.
"""

import argparse
import statistics

import torch

import torchcache_c
from torchcache_c import _C


def _median_ms(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_hash_cuda.py needs a CUDA device")
    device = torch.device(args.device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = torch.empty_like(x)
    out = torch.empty((args.batch, 2), dtype=torch.int64)
    nbytes = x.numel() * x.element_size()
    stream = torch.cuda.current_stream(device).cuda_stream

    def hash_full():
        _C.hash_into(x, out, 0, stream)

    hash_full()
    assert torch.equal(out, torchcache_c.hash_tensor(x.cpu())), "GPU and CPU digests differ"
    digest = out.clone()
    t_hash = _median_ms(hash_full, args.repeats)
    t_copy = _median_ms(lambda: y.copy_(x), args.repeats)
    t_cl = _median_ms(lambda: _C.hash_into(x_cl, out, 0, stream), args.repeats)
    assert torch.equal(out, digest), "channels_last digests differ from contiguous ones"
    t_sub = _median_ms(lambda: _C.hash_into(x, out, 10000, stream), args.repeats)

    print(f"batch {tuple(x.shape)} float32, {nbytes / 1e6:.1f} MB, "
          f"{torch.cuda.get_device_name(device)}, median of {args.repeats} (CUDA events)")
    for name, t in [("hash (full, contiguous)", t_hash), ("y.copy_(x)", t_copy),
                    ("hash (full, channels_last)", t_cl), ("hash (subsample 10000)", t_sub)]:
        print(f"  {name:30s} {t:8.3f} ms  {nbytes / t / 1e6:8.1f} GB/s read")
    print(f"ratio hash/copy               = {t_copy / t_hash:.2f}  (>= 1: hashing reads faster "
          f"than copy reads)")
    print(f"ratio hash(channels_last)/copy = {t_copy / t_cl:.2f}")


if __name__ == "__main__":
    main()
