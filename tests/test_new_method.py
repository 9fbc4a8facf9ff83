"""A new method is one module plus one import line: a throwaway method with two settings, added to a copy of the
repository exactly so, trains through the workflow with its settings from config.yaml, and a wrong setting is
refused while the DAG is built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import PLAIN_BACKBONES, REPO, snakemake_env

#: the whole of the new method: its settings dataclass and its registered class (what docs/contributing.md shows)
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
'''
IMPORT_LINE = "from pipeline.training.methods import mean_pool  # noqa: F401,E402  (registers it)\n"

CONFIG = {
    "demo": {"classes": ["glandular", "solid"], "slides_per_class": 4, "size_px": 2048, "include_real": False},
    "cohort": {"folds": 2, "val_frac": 0.25, "test_frac": 0.25},
    "tasks": [{"name": "demo", "labels": ["glandular", "solid"], "shots": [1], "methods": ["mean_pool"]}],
    "features": {"backbones": PLAIN_BACKBONES},
    "train": {"epochs": 2, "patience": 2, "method_settings": {"mean_pool": {"scale": "20x", "dropout": 0.1}}},
}
RUN = Path("results/models/demo/tiny/1shot")


@pytest.fixture(scope="module")
def repo_with_method(tmp_path_factory) -> Path:
    """A copy of the repository's workflow and package with the new module and its import line, nothing else."""
    copy = tmp_path_factory.mktemp("repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, copy / name)
    for name in ("workflow", "pipeline", "envs"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    methods = copy / "pipeline" / "training" / "methods"
    (methods / "mean_pool.py").write_text(MODULE)
    with (methods / "__init__.py").open("a") as init:
        init.write(IMPORT_LINE)
    return copy


def snakemake(repo: Path, workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "test_config.yaml").write_text(yaml.safe_dump(config))
    env = {**snakemake_env(), "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "test_config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_a_wrong_setting_of_the_new_method_is_refused_before_any_job(repo_with_method, tmp_path):
    config = {**CONFIG, "train": {**CONFIG["train"], "method_settings": {"mean_pool": {"scael": "20x"}}}}
    proc = snakemake(repo_with_method, tmp_path, config, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train.method_settings.mean_pool" in out and "['scael']" in out and "['dropout', 'scale']" in out


@pytest.mark.workflow
def test_a_new_method_module_trains_through_the_workflow_with_its_settings_from_config(repo_with_method, tmp_path):
    import torch

    proc = snakemake(repo_with_method, tmp_path, CONFIG, str(RUN / "results.csv"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = pd.read_csv(tmp_path / RUN / "results.csv")
    assert set(results["method"]) == {"mean_pool"}
    ckpt = torch.load(tmp_path / RUN / "mean_pool" / "checkpoints" / "fold1.pt", weights_only=True)
    assert ckpt["method"] == "mean_pool" and ckpt["settings"] == {"scale": "20x", "dropout": 0.1}
    assert len(pd.read_csv(tmp_path / RUN / "mean_pool" / "summary.csv")) == 2  # both folds
