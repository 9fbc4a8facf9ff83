"""A new task type (endpoint) is one module: a throwaway type registered here, with its own settings, default
methods and runs, passes the config schema, is wired by the workflow's code (runs, splits, methods) and trains an
existing method, with no other file changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jsonschema
import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.settings import option
from pipeline.training.registry import TASK_TYPES, register_task_type
from pipeline.training.tasks.classification import Classification
from pipeline.wiring import cohort as ws

from cohorts import write_classification_cohort
from conftest import REPO
from test_model import feature_files


@dataclass(frozen=True)
class OrdinalSettings:
    margin: float = option(0.5, "how far apart neighbouring grades' logits are kept (unused here)")


@pytest.fixture
def ordinal():
    """What the new module holds: the type, its settings and its defaults (unregistered afterwards)."""

    @register_task_type("ordinal")
    class Ordinal(Classification):
        Settings: ClassVar[type] = OrdinalSettings
        methods_of: ClassVar[str] = "classification"
        default_methods: ClassVar[tuple[str, ...]] = ("abmil_5x", "zeroshot")

    yield Ordinal
    TASK_TYPES.pop("ordinal")


def config_with(task: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return {**config, "tasks": [task]}


def test_a_new_task_type_module_is_wired_by_the_registry_alone(ordinal):
    task = {"name": "grade", "type": "ordinal", "labels": ["low", "high"], "shots": [2, 8],
            "settings": {"margin": 0.25}}
    config = config_with(task)
    jsonschema.validate(config, yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text()))
    found = ws.tasks(config)["grade"]
    assert found["methods"] == ["abmil_5x", "zeroshot"] and found["runs"] == ["2shot", "8shot"]
    assert found["settings"] == {"margin": 0.25} and found["splits"] == ["2", "8"]
    assert ws.split_command(found, config["cohort"], "8").startswith("splits --task grade --shots 8 ")
    with pytest.raises(PipelineError, match=r"task 'grade' settings: unknown setting\(s\) \['marg'\]"):
        ws.tasks(config_with({**task, "settings": {"marg": 1.0}}))
    with pytest.raises(ValueError, match=r"\['hmil'\] do not support"):
        ws.tasks(config_with({**task, "methods": ["hmil"]}))


def test_a_new_task_type_trains_an_existing_method(ordinal, tmp_path):
    from pipeline.training.config import TrainConfig
    from pipeline.training.run import train_method
    from pipeline.training.tasks import load_task

    root = write_classification_cohort(tmp_path, n_train=2, n_val=1, n_test=2)
    task = load_task("ordinal", "grade", root / "dataset.csv", root / "prompts.json", settings={"margin": 0.25})
    assert task.settings == OrdinalSettings(margin=0.25)
    summary = train_method(task=task, method="abmil_5x", backbone_name="tiny", shots=2, out_dir=tmp_path / "out",
                           split_files=[root / "splits" / "synthetic_4" / "splits_0.csv"],
                           features=feature_files(root), config=TrainConfig(epochs=2, patience=2, device="cpu"),
                           settings={"hidden": 16})
    assert list(summary["method"]) == ["abmil_5x"] and (tmp_path / "out" / "checkpoints" / "fold0.pt").exists()
