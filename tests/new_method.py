"""A throwaway method added to a copy of the repository exactly as docs/contributing.md says: one module and one
import line. The session's trained_demo run (conftest.py) runs from such a copy, so that tests/test_new_method.py
can show the method trained and predicted through the workflow with its settings from the config."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: the whole of the new method: its settings dataclass and its registered class
MODULE = '''"""Mean of a slide's features at one scale through one linear layer (a throwaway method for a test)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings import option
from pipeline.training.methods.base import Method, Resources
from pipeline.training.registry import register_method


@dataclass(frozen=True)
class MeanPoolSettings:
    scale: str = option("5x", "the features pooled", choices=("5x", "20x"))
    dropout: float = option(0.0, "dropout before the linear layer")


@register_method("mean_pool", task_types=("classification",), inputs=("5x", "20x"), summary="mean-pooled features",
                 settings=MeanPoolSettings)
class MeanPool(Method):
    settings: MeanPoolSettings

    def build(self, resources: Resources):
        from torch import nn

        layers = nn.Sequential(nn.Dropout(self.settings.dropout), nn.Linear(resources.embed_dim, self.n_classes))
        return layers.to(resources.device)

    def logits(self, model, bag, device, cache=None):
        x5, x20, mask = bag.on(device)
        pooled = (x5 if self.settings.scale == "5x" else x20[mask.bool()]).mean(0)
        out = model(pooled)
        return out, out.new_zeros(())

    def explain(self, model, bag, device, cache=None, target=None):
        """Each 5x patch's logit of the explained class through the same layer."""
        import torch

        from pipeline.explain.scores import PatchScores

        x5, _, _ = bag.on(device)
        with torch.no_grad():
            per_patch = model(x5)
        cls = int(per_patch.mean(0).argmax()) if target is None else int(target)
        return PatchScores({"logit": per_patch[:, cls].float().cpu().numpy()}, {}, "logit")
'''
IMPORT_LINE = "from pipeline.training.methods import mean_pool  # noqa: F401,E402  (registers it)\n"
#: what tests/configs/trained_demo.yaml sets for it
SETTINGS = {"scale": "20x", "dropout": 0.1}


def copy_repo_with_new_method(dst: Path) -> Path:
    """A copy of the repository's workflow and package at `dst`, with the new module and its import line only."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, dst / name)
    for name in ("workflow", "pipeline", "envs"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    methods = dst / "pipeline" / "training" / "methods"
    (methods / "mean_pool.py").write_text(MODULE)
    with (methods / "__init__.py").open("a") as init:
        init.write(IMPORT_LINE)
    return dst
