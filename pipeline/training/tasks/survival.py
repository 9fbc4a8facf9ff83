"""The `survival` task type: patient-level survival with the field's discrete-time convention (MCAT, Patch-GCN).

A target is one patient (case): all their slides form one bag, their label is (time bin, event, days). The bins
are 4 (its setting `bins`) at the quartiles of the uncensored patients' times, computed once per cohort
(pipeline.survival.bins); a method returns one hazard logit per bin, the loss is the discrete-hazard negative
log-likelihood, the survival function S_k = prod_{j<=k} (1 - sigmoid(logit_j)) and the risk -sum_k S_k. Metrics are
Harrell's C-index and the integrated Brier score (scikit-survival, pipeline.survival.metrics); the censoring
distribution of the Brier score is estimated from the whole cohort's labels, since a fold's table sees only its
test patients. The text "classes" of a survival task are the two levels of its attribute prompts
(pipeline.attribute_prompts): region (5x) and patch (20x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.formats import PathLike
from pipeline.labels import LabelTree
from pipeline.settings import option
from pipeline.training.registry import register_task_type
from pipeline.training.tasks.base import CROSS_VALIDATION, RunScheme, TaskType

if TYPE_CHECKING:
    from torch import Tensor

    from pipeline.training.data import FeatureStore


@dataclass(frozen=True)
class SurvivalSettings:
    """MCAT's protocol (Chen et al. 2021), the field's convention for TCGA survival."""

    bins: int = option(4, "time bins at the quartiles of the uncensored patients' times (MCAT 4); also the splits' "
                       "strata (time bin x event)")
    alpha: float = option(0.0, "weight of the uncensored-only term of the discrete-hazard NLL (MCAT 0)")
    epochs: int = option(20, "epochs; no early stopping: there is no validation set, the held-out fold is the test "
                         "(MCAT 20)")
    batch_size: int = option(1, "patients per step (MCAT steps one patient and accumulates 32 gradients: set 32 and "
                             "lr to match it on a large cohort)")
    lr: float = option(2e-4, "Adam learning rate (MCAT 2e-4)")

    def __post_init__(self) -> None:
        if self.bins < 2:
            raise ValueError(f"bins must be >= 2, got {self.bins}")
        if min(self.epochs, self.batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")


class SurvivalTarget(NamedTuple):
    bin: int
    event: int  # 1 = death observed
    time_days: float


@register_task_type("survival")
@dataclass
class Survival(TaskType):
    """Patients' (time bin, event, days); hazards per bin; C-index and integrated Brier score."""

    metrics: ClassVar[dict[str, str]] = {"c_index": "C-index", "ibs": "IBS"}
    id_column: ClassVar[str] = "case_id"
    runs: ClassVar[RunScheme] = CROSS_VALIDATION
    split_command: ClassVar[str] = "survival-splits"
    default_methods: ClassVar[tuple[str, ...]] = ("hila", "abmil_5x", "abmil_20x", "prompt_risk")
    Settings: ClassVar[type] = SurvivalSettings

    edges: list[float] = field(default_factory=list)  # time-bin edges in days (n_bins + 1)
    signs: list[float] = field(default_factory=list)  # per text: +1 = the attribute marks worse prognosis
    attributes: list[str] = field(default_factory=list)  # attribute name per text, region texts first
    members: dict[str, list[str]] = field(default_factory=dict)  # case -> its slides (one bag)

    @classmethod
    def split_arguments(cls, task: dict[str, Any], cohort: dict[str, Any], count: int) -> list[Any]:
        """k-fold cross-validation over patients (pipeline.survival.splits), stratified by time bin x event."""
        bins = cls.settings_of(task).bins
        return ["--folds", count, "--seed", cohort["seed"], "--bins", bins, "--labels", *task["labels"]]

    @classmethod
    def settings_of(cls, task: dict[str, Any]) -> SurvivalSettings:
        from pipeline.training.tasks.base import task_settings

        return task_settings(cls, task.get("settings"), task["name"])

    @classmethod
    def load(cls, name: str, dataset_csv: PathLike, prompts_json: PathLike, tree: LabelTree | None = None,
             settings: Any = None, labels: Sequence[str] = ()) -> "Survival":
        """The patients of dataset.csv with usable follow-up (of `labels` only, when given), binned once."""
        from pipeline.attribute_prompts import load_attribute_prompts
        from pipeline.dataset import read_dataset, survival_table
        from pipeline.survival.bins import assign_bins, time_bin_edges
        from pipeline.training.tasks.base import task_settings

        cfg = settings if isinstance(settings, SurvivalSettings) else task_settings(cls, settings, name)
        dataset = read_dataset(dataset_csv)
        if labels:
            dataset = dataset[dataset["label"].isin(list(labels))]
        table = survival_table(dataset)
        if table.empty:
            raise PipelineError(
                f"task '{name}': no patient of {dataset_csv} has usable follow-up (event and time_days); see "
                "dropped.csv for each slide's reason"
            )
        time = table["time_days"].to_numpy(float)
        event = table["event"].to_numpy(int)
        edges = time_bin_edges(time, event, cfg.bins)
        bins = assign_bins(time, edges)
        targets = {
            case: SurvivalTarget(int(b), int(e), float(t))
            for case, b, e, t in zip(table["case_id"], bins, event, time)
        }
        prompts = load_attribute_prompts(prompts_json)
        texts = [t for group in prompts.group_texts() for t in group]
        return cls(name, prompts.labels, targets, texts, None, cfg, edges=[float(x) for x in edges],
                   signs=prompts.signs(), attributes=prompts.names(),
                   members={c: list(s) for c, s in zip(table["case_id"], table["slides"])})

    def checkpoint_state(self) -> dict[str, Any]:
        return {"edges": self.edges, "signs": self.signs, "attributes": self.attributes}

    # --- what the loop and the methods read -------------------------------------------------------------------

    @property
    def n_outputs(self) -> int:
        return len(self.edges) - 1

    @property
    def n_attributes(self) -> int:
        return len(self.texts) // 2

    def bags(self, store: "FeatureStore") -> "Any":
        from pipeline.training.data import PatientBags

        return PatientBags(store, self.members)

    def epochs(self, cfg: Any) -> int:
        return self.settings.epochs

    def batch_size(self, cfg: Any) -> int:
        return self.settings.batch_size

    def learning_rate(self, cfg: Any) -> float:
        return self.settings.lr

    def loss(self, logits: "Tensor", target: SurvivalTarget) -> "Tensor":
        from pipeline.survival.loss import nll_discrete_hazard

        return nll_discrete_hazard(logits, target.bin, target.event, alpha=self.settings.alpha)

    def outputs(self, logits: "Tensor") -> np.ndarray:
        """The survival function at the end of each bin."""
        from pipeline.survival.loss import survival_function

        return survival_function(logits.detach().float()).cpu().numpy()

    @staticmethod
    def risk(outputs: np.ndarray) -> np.ndarray:
        return -np.asarray(outputs).sum(-1)

    def stopping_error(self, outputs: np.ndarray, targets: Sequence[SurvivalTarget]) -> float:
        c = self.score(targets, outputs)["c_index"]
        return 1.0 - c if np.isfinite(c) else 0.5

    def score(self, targets: Sequence[SurvivalTarget], outputs: np.ndarray) -> dict[str, float]:
        from pipeline.survival.metrics import c_index, integrated_brier

        if not len(targets):
            return dict.fromkeys(self.metrics, float("nan"))
        event = np.array([t.event for t in targets])
        time = np.array([t.time_days for t in targets], float)
        cohort = list(self.targets.values())
        ibs = integrated_brier(np.array([t.event for t in cohort]), np.array([t.time_days for t in cohort], float),
                               event, time, np.asarray(outputs), np.asarray(self.edges))
        return {"c_index": c_index(event, time, self.risk(outputs)), "ibs": ibs}

    def prediction_frame(self, slide_ids: Sequence[str], targets: Sequence[SurvivalTarget] | None,
                         outputs: np.ndarray) -> pd.DataFrame:
        """case_id, (event, time_days, bin), risk, and S at the end of every bin."""
        outputs = np.asarray(outputs).reshape(len(slide_ids), -1)
        frame = pd.DataFrame({self.id_column: list(slide_ids)})
        if targets is not None:
            frame["event"] = [t.event for t in targets]
            frame["time_days"] = [t.time_days for t in targets]
            frame["bin"] = [t.bin for t in targets]
        frame["risk"] = self.risk(outputs)
        for k in range(outputs.shape[1]):
            frame[f"surv_bin{k}"] = outputs[:, k]
        return frame

    def plots(self, predictions: pd.DataFrame, title: str, plots_dir: Path, method: str) -> None:
        """Kaplan-Meier curves of the pooled test patients split at the median predicted risk, log-rank p."""
        from pipeline.survival.metrics import c_index, plot_kaplan_meier

        if len(predictions) < 2:
            return
        event, time, risk = (predictions[c].to_numpy() for c in ("event", "time_days", "risk"))
        pooled = c_index(event, time, risk)
        plot_kaplan_meier(event, time, risk, f"{title}: pooled test patients (C-index {pooled:.3f})",
                          plots_dir / f"km_{method}.png")
