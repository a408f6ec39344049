"""A notebook run headlessly (nbclient): re-running the cell that defines a submodule
class, then the decorated cell, never serves the old outputs (issue 10)."""
import json

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

# The decorated cell: run, then run again after the submodule's cell was edited.
DECORATED = (
    "@torchcache(persistent=True, persistent_cache_dir={cache!r})\n"
    "class Encoder(nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.backbone = Backbone()\n"
    "    def forward(self, x):\n"
    "        calls.append(len(x))\n"
    "        return self.backbone(x)\n"
    "enc = Encoder()"
)

CELLS = [
    "import torch, torch.nn as nn\nfrom torchcache_c import torchcache\ncalls = []",
    # the submodule's cell, first version
    "class Backbone(nn.Module):\n"
    "    def forward(self, x):\n"
    "        return torch.relu(x) * 2",
    # the decorated cell
    DECORATED,
    "x = torch.linspace(-1, 1, 8).reshape(4, 2)\n"
    "first = enc(x); again = enc(x)\n"
    "assert torch.equal(first, again) and calls == [4]",
    # the submodule's cell edited and re-run, then the decorated cell re-run
    "class Backbone(nn.Module):\n"
    "    def forward(self, x):\n"
    "        return torch.tanh(x) * 2",
    DECORATED,
    "out = enc(x)\n"
    "import json\n"
    "print(json.dumps({{'calls': calls, 'equal': bool(torch.equal(out, torch.tanh(x) * 2)),"
    " 'stale': bool(torch.equal(out, first))}}))",
]


def test_notebook_redefinition_of_a_submodule_class_is_not_served_stale(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(cache=str(tmp_path / "cache")))
                for c in CELLS]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert json.loads(text) == {"calls": [4, 4], "equal": True, "stale": False}
