"""config.yaml sections -> command-line flags of the stage commands: the one place that translates them."""

from __future__ import annotations

import shlex
import sys
from typing import Any, Iterable, Mapping

from pipeline.mpp_overrides import read_mpp_overrides

#: keys of config.yaml's `train:` section that are not TrainConfig fields: the job's threads, and each method's own
#: settings (passed to that method's jobs only: pipeline.wiring.cohort.method_settings_flags)
JOB_KEYS = ("threads", "method_settings")


def quote_flags(flags: list[Any]) -> str:
    """Command-line items, each shell-quoted, as one string."""
    return " ".join(shlex.quote(str(f)) for f in flags)


def train_flags(section: dict[str, Any]) -> str:
    """Flags for config.yaml's `train:` section: each key is a TrainConfig field (checked), booleans --x / --no-x."""
    from pipeline.settings import section_flags
    from pipeline.training.config import TrainConfig

    return section_flags(section, TrainConfig, "config: train", skip=JOB_KEYS)


def tissue_flags(tissue: dict[str, Any]) -> str:
    """Command-line flags of the segment command from the config's `tissue` section."""
    flags: list[Any] = [
        "--seg-mpp", tissue["seg_mpp"], "--saturation-threshold", tissue["saturation_threshold"],
        "--median-blur", tissue["median_blur"], "--close-px", tissue["close_px"],
        "--min-tissue-area-um2", tissue["min_tissue_area_um2"], "--min-hole-area-um2", tissue["min_hole_area_um2"],
        "--max-holes", tissue["max_holes"],
    ]  # fmt: skip
    if not tissue["use_otsu"]:
        flags.append("--no-otsu")
    return quote_flags(flags)


def mpp_override_flags(overrides_csv: str, slide_id: str) -> str:
    """Flags carrying this slide's override only, so editing the CSV reruns just the slides it names."""
    override = read_mpp_overrides(overrides_csv).get(slide_id)
    if override is None:
        return ""
    return f"--mpp-override {override.mpp}" + (" --mpp-override-force" if override.force else "")


def python_command(deployment_methods: Iterable[Any], executable: str = sys.executable) -> str:
    """The interpreter the rules' shell commands run `-m pipeline` with (their one home).

    The interpreter Snakemake itself runs in (quoted), so `/path/to/venv/bin/snakemake` works without activating
    the venv; under `--software-deployment-method conda` the job's own env is activated, and its `python` is right.
    `deployment_methods` is `workflow.deployment_settings.deployment_method` (a set of DeploymentMethod).
    """
    if any(str(getattr(m, "name", m)).upper() == "CONDA" for m in deployment_methods):
        return "python"
    return shlex.quote(executable)


def heatmap_flags(predict: dict[str, Any]) -> str:
    """The predict command's heatmap flags from config.yaml's `predict:` section."""
    grid = " --heatmap-grid" if predict["heatmap_grid"] else ""
    return f"--heatmap-px {int(predict['heatmap_px'])}{grid}"


def extract_flags(features: dict[str, Any], reader: str) -> str:
    """Flags shared by the extract and extract-chunk commands, from the config's `features` and `slides.reader`."""
    return quote_flags(["--batch-size", features["batch_size"], "--workers", features["num_workers"],
                   "--on-read-error", features["on_read_error"], "--device", features["device"],
                   "--seed", features["seed"], "--reader", reader])


#: cores an extract job with `num_workers: auto` claims: the model's threads plus decoding (workers on a GPU
#: machine, a thread on the CPU); Snakemake caps it at --cores, a cluster profile may set it per rule.
AUTO_EXTRACT_THREADS = 4


def extract_threads(features: dict[str, Any]) -> int:
    workers = features["num_workers"]
    return AUTO_EXTRACT_THREADS if workers == "auto" else max(1, int(workers))


def chunk_backbone_flags(backbones: dict[str, dict[str, Any]]) -> str:
    """--backbones/--weights/--tokenizers of the extract-chunk command, one value per backbone ('' quoted, so an
    empty weights or tokenizer entry keeps its place)."""
    names = list(backbones)
    return " ".join([
        "--backbones", quote_flags(names),
        "--weights", quote_flags([backbones[n]["weights"] for n in names]),
        "--tokenizers", quote_flags([backbones[n]["tokenizer"] for n in names]),
    ])  # fmt: skip


def llm_flags(llm: dict[str, Any]) -> str:
    """The descriptions command's endpoint flags from config.yaml's `llm:` section (the key by its file only)."""
    flags: list[Any] = [
        "--base-url", llm["base_url"], "--model", llm["model"], "--timeout", llm["timeout"],
        "--retries", llm["retries"], "--max-tokens", llm["max_tokens"], "--seed", llm["seed"],
        "--answer-attempts", llm["answer_attempts"],
    ]  # fmt: skip
    if llm.get("key_file"):
        flags += ["--key-file", llm["key_file"]]
    if not llm["json_mode"]:
        flags.append("--no-json-mode")
    return quote_flags(flags)


def description_source_flags(inputs: Mapping[str, Any], llm: dict[str, Any], cache_dir: str) -> str:
    """--from-csv TABLE when the job checks a ready-made table, else the reports index, the cache and the LLM."""
    if "table" in inputs:
        return quote_flags(["--from-csv", str(inputs["table"])])
    return quote_flags(["--reports-index", str(inputs["reports"]), "--cache-dir", cache_dir]) + " " + llm_flags(llm)


def fine_grained_flags(inputs: Mapping[str, Any]) -> str:
    """The train command's --questions/--descriptions for a method that reads descriptions (FiVE), else ''."""
    if "descriptions" not in inputs:
        return ""
    return quote_flags(["--questions", str(inputs["questions"]), "--descriptions", str(inputs["descriptions"])])


def report_table_flags(table: Any) -> str:
    """The reports command's --table from the rule's table input (a list holding one path, or none for the GDC)."""
    paths = [table] if isinstance(table, str) else list(table)
    return quote_flags(["--table", paths[0]]) if paths else ""


def method_settings_flags(values: dict[str, Any]) -> str:
    """The train command's `--method-settings key=value ...` for one method's checked settings (only its own, so
    changing one method's settings reruns that method's jobs only)."""
    from pipeline.settings import to_assignments

    return quote_flags(["--method-settings", *to_assignments(values)]) if values else ""


def task_settings_flags(values: dict[str, Any]) -> str:
    """The train command's `--task-settings key=value ...` for a task's checked settings."""
    from pipeline.settings import to_assignments

    return quote_flags(["--task-settings", *to_assignments(values)]) if values else ""
