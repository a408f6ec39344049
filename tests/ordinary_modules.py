"""Module-level decorated classes for copy/pickle/spawn tests (importable by workers)."""
import torch
import torch.nn as nn

from torchcache_c import torchcache


class Backbone(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(d, 4)
        self.lin.weight.data = torch.randn(4, d, generator=g)
        self.lin.bias.data = torch.randn(4, generator=g)
        self.requires_grad_(False)

    def forward(self, x):
        return self.lin(x).tanh()


@torchcache()
class CachedBackbone(Backbone):
    pass


class Persisted(Backbone):
    pass


def persisted(cache_dir):
    cls = torchcache(persistent=True, persistent_cache_dir=cache_dir)(Persisted)
    return cls()


class Items(torch.utils.data.Dataset):
    def __init__(self, model):
        self.model = model
        self.x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        with torch.no_grad():
            return self.model(self.x[i:i + 1])[0]


@torchcache(persistent=True)
class TmpPersisted(Backbone):
    pass
