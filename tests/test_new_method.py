"""A new method is one module plus one import line (tests/new_method.py adds a throwaway one with two settings to a
copy of the repository exactly so): the session's trained_demo run, made from such a copy, trains and predicts it
with its settings from the config, and a wrong setting is refused while the DAG is built."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import run_snakemake
from new_method import SETTINGS, copy_repo_with_new_method
from wf_configs import load_config

RUN = "results/models/demo/tiny/1shot"


def test_a_wrong_setting_of_the_new_method_is_refused_before_any_job(tmp_path):
    repo = copy_repo_with_new_method(tmp_path / "repo")
    config = load_config("two_slides", "training", "trained_demo")
    config["train"]["method_settings"]["mean_pool"] = {"scael": "20x"}
    proc = run_snakemake(tmp_path / "run", config, "-n", check=False, repo=repo)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train.method_settings.mean_pool" in out and "['scael']" in out and "['dropout', 'scale']" in out


@pytest.mark.workflow
def test_a_new_method_module_trains_and_predicts_through_the_workflow_with_its_settings(trained_demo):
    import torch

    run = trained_demo / RUN
    assert "mean_pool" in set(pd.read_csv(run / "results.csv")["method"])
    ckpt = torch.load(run / "mean_pool" / "checkpoints" / "fold1.pt", weights_only=True)
    assert ckpt["method"] == "mean_pool" and ckpt["settings"] == SETTINGS
    assert len(pd.read_csv(run / "mean_pool" / "summary.csv")) == 2  # both folds
    predictions = trained_demo / "results/predictions/demo/tiny/1shot/mean_pool/predictions.csv"
    assert len(pd.read_csv(predictions)) == 8
