"""HLSS in the workflow: pretraining, the adapted backbone's features, its kNN table and its trained models."""

from __future__ import annotations

import h5py
import pandas as pd
import pytest

pytestmark = pytest.mark.workflow


def test_demo_like_run_pretrains_adapts_evaluates_and_trains_on_the_adapted_backbone(trained_demo):
    """The session's trained_demo run (tests/configs/trained_demo.yaml), which pretrains tiny_hlss for 10 steps."""
    results = trained_demo / "results"
    hlss = results / "pretrain" / "tiny_hlss"
    assert len(pd.read_csv(hlss / "losses.csv")) == 10 and (hlss / "loss.png").exists()

    table = pd.read_csv(hlss / "knn_demo.csv")
    assert list(table[["metric", "level"]].itertuples(index=False, name=None)) == [
        ("knn_accuracy", "patch"), ("knn_accuracy", "slide"), ("knn_accuracy", "patient"),
        ("zeroshot_accuracy", "slide"), ("zeroshot_accuracy", "patient")]
    assert {"tiny", "tiny_hlss", "change"} <= set(table.columns) and table["tiny_hlss"].between(0, 1).all()
    assert "| demo | knn_accuracy | patient |" in (hlss / "knn_demo.md").read_text()

    slide = sorted((results / "features" / "tiny" / "tiny_20x").glob("*.h5"))[0].name
    with h5py.File(results / "features" / "tiny_hlss" / "tiny_hlss_20x" / slide) as f:
        assert f.attrs["backbone"] == "tiny_hlss" and f.attrs["adapted_from"].endswith(f"tiny_20x/{slide}")
        assert f.attrs["hlss_steps"] == 10

    trained = pd.read_csv(results / "models" / "demo" / "tiny_hlss" / "1shot" / "results.csv")
    assert set(trained["method"]) == {"hivemil"} and set(trained["backbone"]) == {"tiny_hlss"}
