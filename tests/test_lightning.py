"""Lightning's StochasticWeightAveraging deep-copies the LightningModule, cached
backbone included (issue 10): training runs and the copy serves correct outputs."""
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from ordinary_modules import Backbone, CachedBackbone  # noqa: E402


class Head(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = CachedBackbone()
        self.head = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        with torch.no_grad():
            features = self.backbone(x)
        return torch.nn.functional.mse_loss(self.head(features).squeeze(1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


def test_stochastic_weight_averaging_with_a_cached_backbone(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=g), torch.randn(32, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model = Head()
    swa = pl.callbacks.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", default_root_dir=tmp_path,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False,
                         callbacks=[swa])
    trainer.fit(model, loader)
    average = swa._average_model        # Lightning's deep copy of the whole module
    assert average.backbone.cache_instance is not model.backbone.cache_instance
    stats = model.backbone.cache_instance.stats()
    assert stats["hits"] >= 3 * len(x)          # epochs after the first hit
    with torch.no_grad():
        assert torch.equal(model.backbone(x), torch.cat([Backbone()(x[i:i + 8])
                                                         for i in range(0, 32, 8)]))
