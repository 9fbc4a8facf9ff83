"""Shared fixtures: one torch thread for tiny-tensor tests, the bundled real slide, the broken fixtures, a synthetic
40x-base slide, a snakemake runner, and the patched two-slide demo that several workflow test modules start from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from new_method import copy_repo_with_new_method
from wf_configs import load_config
from wf_outputs import mtimes

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "slides"
CMU1 = REPO / "pipeline" / "data" / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny-tensor tests (~10x faster than two spinning OpenMP threads on a
    shared 2-core box), restored afterwards so other modules keep torch's default."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def cmu1() -> Path:
    return CMU1


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def slide_40x(tmp_path_factory) -> Path:
    """A synthetic 40x-base (0.25 um/px) pyramidal JPEG TIFF with solid-sheet tissue."""
    from pipeline.demo import render_slide, write_pyramid_tiff

    path = tmp_path_factory.mktemp("slides") / "synthetic_40x.tiff"
    write_pyramid_tiff(path, render_slide("solid", seed=3, size=6144, mpp=0.25), mpp=0.25)
    return path


def snakemake_env() -> dict[str, str]:
    """The environment for a snakemake subprocess: this interpreter's bin first, so `python -m pipeline` resolves."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


#: the backbones of a test's workflow when its config names none: the plain `tiny`, not the demo's `tiny_hlss`
#: beside it, whose pretraining (minutes) the trained_demo run below and the demo cover
PLAIN_BACKBONES = [{"name": "tiny", "weights": "random"}]


def snakemake_command(workdir: Path, config: dict, *args: str, cores: int = 2, repo: Path = REPO) -> list[str]:
    """The command running the repo's Snakefile in `workdir` with `config` (written there) merged over config.yaml.

    A non-empty config without `features.backbones` gets PLAIN_BACKBONES; `{}` runs the demo's config as it is."""
    workdir.mkdir(parents=True, exist_ok=True)
    if config and "backbones" not in config.get("features", {}):
        config = {**config, "features": {**config.get("features", {}), "backbones": PLAIN_BACKBONES}}
    cfg = workdir / "test_config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return [
        sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(cfg), "--cores", str(cores), *args,
    ]  # fmt: skip


def run_snakemake(workdir: Path, config: dict, *args: str, check: bool = True,
                  repo: Path = REPO) -> subprocess.CompletedProcess:
    """Run the Snakefile of `repo` (this repository, or a copy of it) in `workdir` with `config` merged over its
    config.yaml; a copy's `pipeline` package is the one its jobs and its DAG import."""
    cmd = snakemake_command(workdir, config, *args, repo=repo)
    env = snakemake_env()
    if repo != REPO:
        env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture
def snakemake():
    return run_snakemake


def copy_workdir(src: Path, dst: Path) -> Path:
    """A copy of a workflow run's folder to change without touching the original: copytree keeps mtimes and the
    .snakemake/ metadata, so Snakemake sees the copy as up to date exactly where the original is."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@contextmanager
def unchanged_outputs(workdir: Path) -> Iterator[None]:
    """Fails at the end of the block if an output under workdir/results was written, added or removed: a shared run
    that one test changed would no longer be what the next test reads."""
    before = mtimes(workdir / "results")
    yield
    after = mtimes(workdir / "results")
    changed = sorted(rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel))
    assert not changed, f"a test changed the shared run in {workdir} (work on a copy_workdir instead): {changed[:10]}"


@pytest.fixture(scope="session")
def two_slides_patched(tmp_path_factory) -> Iterator[tuple[Path, subprocess.CompletedProcess]]:
    """The two-slide demo (tests/configs/two_slides.yaml), default target run with --until patch_all: the patching
    stage complete, nothing after it; the run's folder and its output. Shared by the session's workflow tests
    (reruns, report, SLURM's local reference), which only read it or work on a copy_workdir of it."""
    workdir = tmp_path_factory.mktemp("two_slides_patched")
    proc = run_snakemake(workdir, load_config("two_slides"), "--until", "patch_all")
    with unchanged_outputs(workdir):
        yield workdir, proc


#: the targets of the trained_demo run: every model and prediction, and the HLSS pretraining with its kNN table
TRAINED_DEMO_TARGETS = ("train_all", "predict_all", "pretrain_all")


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory) -> Iterator[Path]:
    """The demo-sized run that trains (tests/configs/trained_demo.yaml: eight slides, tiny + quiltnet + tiny_hlss)
    through TRAINED_DEMO_TARGETS; its folder. One run for the session (minutes): the tests reading it must not
    change it. It runs from a copy of the repository with one new method added as docs/contributing.md says
    (tests/new_method.py), which it trains and predicts beside the shipped ones."""
    workdir = tmp_path_factory.mktemp("trained_demo")
    repo = copy_repo_with_new_method(tmp_path_factory.mktemp("repo_with_new_method"))
    run_snakemake(workdir, load_config("two_slides", "training", "trained_demo"), *TRAINED_DEMO_TARGETS, repo=repo)
    with unchanged_outputs(workdir):
        yield workdir
