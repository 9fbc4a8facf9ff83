"""The survival task type end to end on feature files: patient bags, CV splits, HiLa and the baselines through the
registry and the shared loop, result tables, KM plots, attribute tables, checkpoints and prediction."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.training.config import TrainConfig

from cohorts import write_survival_cohort

DIM = 32
K = 4


@pytest.fixture(scope="module")
def backbone():
    from pipeline.features import create_backbone

    return create_backbone("tiny", weights="random", embed_dim=DIM)


def features(root):
    from pipeline.training.data import pair_feature_files

    return pair_feature_files(sorted((root / "f5").glob("*.h5")), sorted((root / "fh").glob("*.h5")))


def survival_task(root, **settings):
    from pipeline.training.tasks import load_task

    return load_task("survival", "os", root / "dataset.csv", root / "prompts.json", settings=settings)


def cv_splits(root, folds=3):
    from pipeline.cli import main

    assert main(["survival-splits", "--dataset", str(root / "dataset.csv"), "--out-dir", str(root / "splits"),
                 "--folds", str(folds), "--bins", "4"]) == 0
    return sorted((root / "splits").glob("splits_*.csv"))


#: the survival task's settings, and the methods', in these tests
SMALL = dict(epochs=10, lr=2e-3, batch_size=4)
METHOD_SETTINGS = {"hila": {"hidden": 32, "n_ctx": 4}, "abmil_5x": {"hidden": 32}, "abmil_20x": {"hidden": 32}}
CPU_CONFIG = TrainConfig(device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, backbone, one_torch_thread):
    """HiLa, both ABMILs and prompt_risk on one synthetic cohort, 3-fold CV (trained once for the module)."""
    from pipeline.formats import TextEmbeddings, write_text_embeddings
    from pipeline.training.run import train_task

    root = tmp_path_factory.mktemp("surv")
    truth = write_survival_cohort(root, DIM)
    task = survival_task(root, **SMALL)
    with torch.no_grad():
        emb = backbone.encode_text(backbone.tokenize(task.texts)).float().numpy().reshape(2, K, -1)
    write_text_embeddings(root / "text.h5", TextEmbeddings(emb, task.classes, [task.texts[:K], task.texts[K:]],
                                                           {"logit_scale": float(backbone.logit_scale)}))
    out = root / "models" / "os" / "tiny" / "cv3"
    summary = train_task(methods=["hila", "abmil_5x", "abmil_20x", "prompt_risk"], out_dir=out, task=task,
                         backbone_name="tiny", split_files=cv_splits(root), features=features(root),
                         text_embeddings=root / "text.h5", backbone=backbone, config=CPU_CONFIG,
                         method_settings=METHOD_SETTINGS)
    return {"root": root, "out": out, "summary": summary, "truth": truth, "task": task}


def test_a_patient_with_two_slides_forms_one_bag(tmp_path):
    from pipeline.training.data import FeatureStore

    write_survival_cohort(tmp_path, DIM, n_patients=12)
    task = survival_task(tmp_path)
    assert task.members["P000"] == ["P000-S0", "P000-S1"] and task.members["P001"] == ["P001-S0"]
    store = FeatureStore(features(tmp_path))
    bags = task.bags(store)
    bag = bags.get("P000")
    one, two = store.get("P000-S0"), store.get("P000-S1")
    assert bag.slide_id == "P000" and bag.x5.shape[0] == one.x5.shape[0] + two.x5.shape[0]
    assert torch.equal(bag.x20[one.x5.shape[0]:], two.x20) and torch.equal(bag.mask[: one.x5.shape[0]], one.mask)
    assert "P000" in bags and "nobody" not in bags
    # every patient is binned once for the cohort, bins in [0, 4)
    assert {t.bin for t in task.targets.values()} <= {0, 1, 2, 3} and len(task.edges) == 5


def test_hila_and_abmil_find_the_planted_risk(trained):
    summary = trained["summary"]
    mean = summary.groupby("method")["c_index"].mean()
    assert mean["hila"] > 0.7 and mean["abmil_20x"] > 0.7, summary
    assert set(summary["shots"]) == {"cv"} and set(summary["n_val"]) == {0}
    assert summary["ibs"].between(0, 1).all() or summary["ibs"].isna().any()


def test_prompt_risk_trains_nothing_and_scores_every_patient(trained):
    preds = pd.read_csv(trained["out"] / "prompt_risk" / "predictions.csv")
    assert sorted(preds["case_id"]) == sorted(trained["task"].targets)  # each patient tested exactly once
    assert not any((trained["out"] / "prompt_risk" / "curves").iterdir())  # no parameters, no training curve


def test_outputs_tables_plots_and_attributes(trained):
    out = trained["out"]
    assert set(pd.read_csv(out / "summary.csv")["method"]) == {"hila", "abmil_5x", "abmil_20x", "prompt_risk"}
    results = pd.read_csv(out / "results.csv")
    assert {"c_index", "ibs", "stat", "folds"} <= set(results.columns)
    assert set(results["method"]) == {"hila", "abmil_5x", "abmil_20x", "prompt_risk"}
    assert "C-index" in (out / "comparison.md").read_text()
    preds = pd.read_csv(out / "hila" / "predictions.csv")
    assert {"case_id", "event", "time_days", "bin", "risk", "surv_bin0", "surv_bin3"} <= set(preds.columns)
    surv = preds[[f"surv_bin{k}" for k in range(4)]].to_numpy()
    assert (np.diff(surv, axis=1) <= 1e-7).all() and np.allclose(preds["risk"], -surv.sum(1))
    for method in ("hila", "abmil_5x", "prompt_risk"):
        assert (out / method / "plots" / f"km_{method}.png").read_bytes()[:4] == b"\x89PNG"
    attrs = pd.read_csv(out / "hila" / "attributes.csv")
    assert set(attrs["level"]) == {"region", "patch"} and set(attrs["rank"]) == {1, 2, 3}
    assert set(attrs["attribute"]) <= set(trained["task"].attributes)
    assert attrs.groupby(["fold", "case_id", "level"]).size().eq(3).all()


def test_checkpoint_restores_without_a_text_tower_and_predicts(trained, tmp_path):
    from pipeline.training.checkpoints import load_checkpoint, restore_model
    from pipeline.training.data import FeatureStore
    from pipeline.training.predict import PredictOutputs, predict_slides

    out, root = trained["out"], trained["root"]
    ckpt = load_checkpoint(out / "hila" / "checkpoints" / "fold0.pt", backbone="tiny")
    assert ckpt["task_type"] == "survival" and ckpt["task_state"]["edges"] == trained["task"].edges
    assert not any(k.startswith(("region_text_encoder.backbone", "patch_text_encoder.backbone"))
                   for k in ckpt["state_dict"])
    model = restore_model(ckpt, torch.device("cpu"))
    bag = FeatureStore(features(root)).get("P001-S0")
    assert model(bag.x5, bag.x20, bag.mask).logits.shape == (4,)
    files = {s: f for s, f in features(root).items() if s.startswith(("P001", "P002"))}
    frame = predict_slides(checkpoints=sorted((out / "hila" / "checkpoints").glob("*.pt")), features=files,
                           backbone_name="tiny", outputs=PredictOutputs.in_folder(tmp_path / "pred"))
    assert list(frame["slide_id"]) == sorted(files) and {"risk", "surv_bin0", "n_models"} <= set(frame.columns)
    assert (frame["n_models"] == 3).all()


def test_gradient_reaches_the_prompt_context_through_the_method(tmp_path, backbone):
    from pipeline.training.data import FeatureStore
    from pipeline.training.methods import get_method
    from pipeline.training.methods.base import Resources

    write_survival_cohort(tmp_path, DIM, n_patients=12)
    task = survival_task(tmp_path, **SMALL)
    method = get_method("hila")(CPU_CONFIG, task, METHOD_SETTINGS["hila"])
    model = method.build(Resources(embed_dim=DIM, device=torch.device("cpu"), backbone_factory=lambda: backbone))
    bags = task.bags(FeatureStore(features(tmp_path)))
    case = next(iter(task.targets))
    loss = method.training_loss(model, [(bags.get(case), task.targets[case])], torch.device("cpu"), 0, 1)
    loss.backward()
    for encoder in (model.region_text_encoder, model.patch_text_encoder):
        assert encoder.ctx.grad is not None and encoder.ctx.grad.abs().sum() > 0


def test_hila_settings_are_the_model_config_plus_the_prompt_context():
    """One home per HiLa hyperparameter: the method's settings extend HiLaConfig (the model's), and build it back;
    prompt_risk's transport settings default to HiLa's."""
    from pipeline.model.hila import HiLaConfig
    from pipeline.training.methods.hila import HiLaSettings
    from pipeline.training.methods.prompt_risk import PromptRiskSettings

    assert {f.name for f in fields(HiLaSettings)} == {f.name for f in fields(HiLaConfig)} | {"n_ctx"}
    assert HiLaSettings(hidden=64, heads=8).hila_config() == HiLaConfig(hidden=64, heads=8)
    assert PromptRiskSettings().hila_config() == HiLaConfig()


def test_survival_task_without_follow_up_is_refused(tmp_path):
    from pipeline.errors import PipelineError

    write_survival_cohort(tmp_path, DIM, n_patients=6)
    frame = pd.read_csv(tmp_path / "dataset.csv")
    frame.assign(event="", time_days="").to_csv(tmp_path / "dataset.csv", index=False)
    with pytest.raises(PipelineError, match="no patient .* has usable follow-up"):
        survival_task(tmp_path)
