"""The workflow as a cluster citizen: profiles checked in dry runs, and the demo run through a real SLURM.

The `slurm`-marked tests need the one-node SLURM of .ci/slurm-up.sh (CI starts it); they are skipped where
`sbatch` is absent. They run the small demo through `--executor slurm` with tests/slurm_profile, then check
that every job went through sbatch (SLURM's job logs, slurmctld's job records) and that the outputs equal a
plain local run's. The dry-run tests need no SLURM: they read the resources each job would be submitted with.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, copy_workdir, run_snakemake
from wf_configs import load_config
from wf_outputs import assert_same_results

CI_PROFILE = REPO / "tests" / "slurm_profile"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
WORKSTATION_PROFILE = REPO / "workflow" / "profiles" / "workstation"
SLURM_DEMO = load_config("two_slides")
SLIDES = ["demo_glandular_00", "demo_solid_00"]
#: the patching stage of both slides, and one feature extraction (a GPU rule) to see a GPU request through SLURM
TARGETS = ("patch_all", f"results/features/tiny/tiny_5x/{SLIDES[1]}.h5")
PER_SLIDE_RULES = ("demo_slide", "segment", "patch")
GPU_RULES = ("extract", "train")

needs_sbatch = pytest.mark.skipif(
    shutil.which("sbatch") is None,
    reason="sbatch is not on PATH, so there is no SLURM here; .ci/slurm-up.sh starts a one-node SLURM (as root)",
)


# --- dry runs: what each job would ask SLURM for ---------------------------------------------------------------


def dry_run_jobs(stdout: str) -> list[dict[str, str]]:
    """The job blocks of a dry run's output: rule, output and resources of each job."""
    jobs: list[dict[str, str]] = []
    for line in stdout.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append({"rule": m.group(1)})
        elif jobs and (m := re.match(r"^\s+(output|resources): (.*)$", line)):
            jobs[-1][m.group(1)] = m.group(2)
    return jobs


def resources_of(job: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job.get("resources", "").split(", ") if "=" in item)


@pytest.fixture(scope="module")
def slurm_dry_run(tmp_path_factory) -> list[dict[str, str]]:
    """Every job of the default target as the SLURM profile would submit it (nothing is run)."""
    workdir = tmp_path_factory.mktemp("slurm_dry")
    proc = run_snakemake(workdir, SLURM_DEMO, "--profile", str(SLURM_PROFILE), "-n")
    return dry_run_jobs(proc.stdout)


@pytest.mark.workflow
def test_slurm_profile_puts_cpu_rules_on_the_cpu_partition(slurm_dry_run):
    by_rule = {}
    for job in slurm_dry_run:
        by_rule.setdefault(job["rule"], []).append(resources_of(job))
    for rule in PER_SLIDE_RULES:
        assert len(by_rule[rule]) == len(SLIDES), rule
        for res in by_rule[rule]:
            assert res["slurm_partition"] == "cpu", (rule, res)
            assert "gpu" not in res, (rule, res)
            assert int(res["runtime"]) > 0 and int(res["mem_mb"]) > 0, (rule, res)
    # the profile's set-resources win over the rule's own booking
    assert {r["mem_mb"] for r in by_rule["segment"]} == {"8000"}


@pytest.mark.workflow
@pytest.mark.parametrize("rule", GPU_RULES)
def test_slurm_profile_asks_for_one_gpu(slurm_dry_run, rule):
    jobs = [j for j in slurm_dry_run if j["rule"] == rule]
    if not jobs:
        pytest.skip(f"rule {rule!r} is not in the workflow's default target yet")
    for job in jobs:
        res = resources_of(job)
        print(f"{rule}: {job.get('output')}\n    {job['resources']}")
        # the plugin turns these into: -p gpu --gpus=1 --cpus-per-gpu=N (see docs/slurm.md)
        assert res["slurm_partition"] == "gpu" and res["gpu"] == "1", res
        assert int(res["cpus_per_gpu"]) >= 1, res


@pytest.mark.workflow
@pytest.mark.parametrize("rule", GPU_RULES)
def test_workstation_profile_gives_gpu_rules_the_gpu_resource(tmp_path, rule):
    proc = run_snakemake(tmp_path, SLURM_DEMO, "--profile", str(WORKSTATION_PROFILE), "-n")
    jobs = dry_run_jobs(proc.stdout)
    assert any(j["rule"] == "segment" and "gpu" not in resources_of(j) for j in jobs)
    gpu_jobs = [j for j in jobs if j["rule"] == rule]
    if not gpu_jobs:
        pytest.skip(f"rule {rule!r} is not in the workflow's default target yet")
    assert all(resources_of(j)["gpu"] == "1" for j in gpu_jobs)


# --- the real thing: the demo through sbatch ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> None:
    """A SLURM controller that answers; a SLURM client without one is an error here, not a skip."""
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in ping.stdout:
        answer = (ping.stdout + ping.stderr).strip()
        pytest.fail(f"sbatch is installed but no SLURM controller answers ({answer}); run .ci/slurm-up.sh")


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("slurm_run")
    proc = run_snakemake(workdir, SLURM_DEMO, "--profile", str(CI_PROFILE), *TARGETS)
    return workdir, proc


@pytest.fixture(scope="module")
def local_run(two_slides_patched, tmp_path_factory) -> Path:
    """TARGETS run locally: a copy of the session's patched SLURM_DEMO, carried on through the one extraction."""
    workdir = copy_workdir(two_slides_patched[0], tmp_path_factory.mktemp("local_run") / "run")
    run_snakemake(workdir, SLURM_DEMO, *TARGETS)
    return workdir


def slurm_job(job_id: str) -> dict[str, str]:
    """slurmctld's record of one job (kept MinJobAge=600 s after it ends; no accounting needed)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    assert proc.returncode == 0, f"slurmctld has no job {job_id}: {proc.stderr}"
    return dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)


@pytest.mark.slurm
@needs_sbatch
def test_every_job_went_through_sbatch(slurm_run):
    workdir, proc = slurm_run
    logs = workdir / ".snakemake" / "slurm_logs"
    expected = [(rule, logs / f"rule_{rule}" / slide) for rule in PER_SLIDE_RULES for slide in SLIDES]
    expected.append(("cohort_sheet", logs / "rule_cohort_sheet"))
    expected.append(("extract", logs / "rule_extract"))
    job_ids = []
    for rule, folder in expected:
        files = sorted(folder.rglob("*.log"))
        assert len(files) == 1, f"{folder}: expected one SLURM job log, found {[f.name for f in files]}"
        text = files[0].read_text()
        # the job ran as a SLURM job step, started by the allocation, not by the local scheduler
        assert "--executor slurm-jobstep" in text and f"rule {rule}:" in text, files[0]
        assert "1 of 1 steps (100%) done" in text, files[0]
        job_ids.append(files[0].stem)

    assert len(set(job_ids)) == len(expected)
    for job_id in job_ids:
        job = slurm_job(job_id)
        assert job["JobState"] == "COMPLETED", (job_id, job["JobState"])
        assert Path(job["WorkDir"]).resolve() == workdir.resolve(), job["WorkDir"]

    output = proc.stdout + proc.stderr
    assert len(re.findall(r"has been submitted with SLURM jobid (\d+)", output)) == len(expected)
    for rule in PER_SLIDE_RULES + ("cohort_sheet", "extract"):
        assert f"localrule {rule}:" not in output, f"{rule} ran on the submitting host"


@pytest.mark.slurm
@needs_sbatch
def test_slurm_outputs_equal_a_local_run(slurm_run, local_run):
    workdir, _ = slurm_run
    assert_same_results(workdir / "results", local_run / "results")


@pytest.mark.slurm
@needs_sbatch
def test_jobs_went_to_their_partitions_with_their_gpu_requests(slurm_run):
    """CPU rules on `cpu` without GPU; extraction on `gpu` with --gpus=1, which sbatch accepted (stand-in GRES)."""
    workdir, _ = slurm_run
    logs = workdir / ".snakemake" / "slurm_logs"
    for folder in logs.iterdir():
        for log in folder.rglob("*.log"):
            job = slurm_job(log.stem)
            if folder.name == "rule_extract":
                assert job["Partition"] == "gpu" and "gpu:1" in job.get("TresPerJob", ""), job
            else:
                assert job["Partition"] == "cpu" and "gpu" not in job.get("TresPerJob", ""), (folder.name, job)
