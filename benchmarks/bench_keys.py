"""Cost of the per-call validity check of a module key (issue 10: at most 10 us per call
for a module of torchvision ResNet-50's size).

The module is a ResNet-50 built here layer for layer (torchvision's own class is not
installed in the CPU test environment): 161 parameters, 159 buffers, 151 submodules.
Printed side by side, in one run:
  check      KeyTracker.current(): the C pass over watched dicts and version counters
  check+grad the same with grad enabled (every parameter's requires_grad is read too)
  py-check   the check main did before this change, in Python: version counter, data
             pointer and shape of every parameter and buffer, and requires_grad
  id loop    [id(t) for t in tensors] over the same 320 tensors: the cheapest Python
             loop that touches each tensor once, to read the check's cost on a loaded
             machine (the check reads each tensor's version counter through torch's
             getter, which costs about what one such loop step does)
  forward    one uncached forward of a 1-item 64x64 batch, for scale

    python benchmarks/bench_keys.py [--repeat 20000]
"""

from __future__ import annotations

import argparse
import timeit

import torch
import torch.nn as nn
from _machine import cpu_description

from torchcache_c import torchcache


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


@torchcache()
class ResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, 1000)
        self.requires_grad_(False)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    m = ResNet50().eval()
    keys = m.cache_instance.keys
    n_params = sum(1 for _ in m.parameters())
    n_buffers = sum(1 for _ in m.buffers())
    n_modules = sum(1 for _ in m.modules())
    x = torch.randn(1, 3, 64, 64)
    keys.current(False)
    tensors = list(m.named_parameters()) + list(m.named_buffers())

    def py_check():
        signature = tuple((name, t._version, t.data_ptr(), tuple(t.shape)) for name, t in tensors)
        trainable = [name for name, p in m.named_parameters() if p.requires_grad]
        return signature, trainable

    def best(fn, number):
        return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6

    with torch.no_grad():
        check = best(lambda: keys.current(False), args.repeat)
        check_grad = best(lambda: keys.current(True), args.repeat)
        py = best(py_check, max(1, args.repeat // 20))
        id_loop = best(lambda: [id(t) for t in tensors], args.repeat)
        plain = ResNet50.__mro__[1]().eval()   # the undecorated class
        fwd = best(lambda: plain(x), 5)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; 1 thread")
    print(f"module: {n_modules} submodules, {n_params} parameters, {n_buffers} buffers")
    print(f"{'check (no grad)':<22}{check:10.2f} us")
    print(f"{'check (grad enabled)':<22}{check_grad:10.2f} us")
    print(f"{'python check (main)':<22}{py:10.2f} us   ratio check/py: {check / py:.3f}")
    print(f"{'id() loop, 320 tensors':<22}{id_loop:10.2f} us   ratio check/id loop: "
          f"{check / id_loop:.2f}")
    print(f"{'uncached forward':<22}{fwd:10.2f} us   check/forward: {check / fwd:.4f}")
    print(f"target: check <= 10 us -> {'met' if check <= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
