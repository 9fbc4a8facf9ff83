"""Reruns and interruptions: what Snakemake recomputes after --until, --forcerun, a changed parameter or a kill.

One small demo run (two synthetic slides) is the reference; each test works on a copy of it (copytree keeps
mtimes and .snakemake/ metadata) and checks, by mtime, exactly which outputs were rewritten, and by content,
that the results equal the reference.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_workdir, run_snakemake, snakemake_command, snakemake_env
from wf_configs import load_config
from wf_outputs import assert_same_results, mtimes, result_files, rewritten

pytestmark = pytest.mark.workflow

RERUN_DEMO = load_config("two_slides")
SLIDES = ["demo_glandular_00", "demo_solid_00"]
PATCHING_STAGE_RULES = {"demo_slide", "cohort_sheet", "segment", "patch", "patch_all"}
#: output folders under results/ written by each rule of the patching stage
FOLDERS_OF = {
    "demo_slide": {"demo/slides"},
    "cohort_sheet": {"cohort"},
    "segment": {"tissue", "qc/tissue"},
    "patch": {"patches", "qc/patches"},
}


def folder_of(rel: str) -> str:
    """The output folder of a results-relative path: 'qc/tissue/x.png' -> 'qc/tissue', 'patches/x.h5' -> 'patches'."""
    parts = Path(rel).parts
    return "/".join(parts[:2]) if parts[0] in ("qc", "demo") else parts[0]


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run (printed to stderr) or dry run (stdout)."""
    counts, in_table = {}, False
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("Job stats:"):
            in_table = True
        elif in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                counts[parts[0]] = int(parts[1])
            elif not line.strip() and counts:
                break
    return counts


@pytest.fixture(scope="module")
def reference(two_slides_patched) -> tuple[Path, subprocess.CompletedProcess]:
    """The default target, run with --until patch_all: the patching stage complete, nothing after it (the
    session's run of RERUN_DEMO, shared with other modules: read only)."""
    return two_slides_patched


@pytest.fixture
def copy_of_reference(reference, tmp_path) -> Path:
    return copy_workdir(reference[0], tmp_path / "run")


def test_until_patch_all_stops_there(reference):
    workdir, proc = reference
    assert set(job_counts(proc)) <= PATCHING_STAGE_RULES, job_counts(proc)
    assert job_counts(proc)["patch"] == len(SLIDES)
    written = {folder_of(rel) for rel in result_files(workdir / "results")}
    assert written == set().union(*FOLDERS_OF.values()), written
    assert sorted(p.name for p in (workdir / "results" / "cohort").iterdir()) == ["sheet.csv"]
    # what is left of the default target lies downstream: nothing up to patch_all is redone
    left = job_counts(run_snakemake(workdir, RERUN_DEMO, "-n"))
    assert not set(left) & (PATCHING_STAGE_RULES - {"patch_all"}), left


def test_forcerun_segment_recomputes_segment_and_patch_only(copy_of_reference, reference):
    before = mtimes(copy_of_reference / "results")
    proc = run_snakemake(copy_of_reference, RERUN_DEMO, "--forcerun", "segment", "--until", "patch_all")
    assert job_counts(proc) == {"segment": len(SLIDES), "patch": len(SLIDES), "patch_all": 1}
    changed = rewritten(before, mtimes(copy_of_reference / "results"))
    assert {folder_of(rel) for rel in changed} == FOLDERS_OF["segment"] | FOLDERS_OF["patch"]
    expected = {rel for rel in before if folder_of(rel) in FOLDERS_OF["segment"] | FOLDERS_OF["patch"]}
    assert changed == expected
    # recomputed, the outputs are the same as before
    assert_same_results(copy_of_reference / "results", reference[0] / "results")


@pytest.mark.parametrize(
    "section,change,rerun_rules",
    [
        ("tissue", {"median_blur": 5}, {"segment", "patch"}),
        ("patching", {"min_tissue_fraction": 0.5}, {"patch"}),
    ],
)
def test_changed_parameter_reruns_that_stage_and_downstream(copy_of_reference, section, change, rerun_rules):
    config = {**RERUN_DEMO, section: change}
    dry = run_snakemake(copy_of_reference, config, "--until", "patch_all", "-n")
    assert set(job_counts(dry)) == rerun_rules | {"patch_all"}, dry.stdout[-3000:]
    assert "Params have changed since last execution" in dry.stdout, dry.stdout[-3000:]

    before = mtimes(copy_of_reference / "results")
    run_snakemake(copy_of_reference, config, "--until", "patch_all")
    changed = rewritten(before, mtimes(copy_of_reference / "results"))
    folders = set().union(*(FOLDERS_OF[r] for r in rerun_rules))
    assert changed == {rel for rel in before if folder_of(rel) in folders}
    # and the next run with the same change has nothing left to do
    assert not job_counts(run_snakemake(copy_of_reference, config, "--until", "patch_all", "-n"))


# --- interruptions ------------------------------------------------------------------------------------------
# Each case: the rule to interrupt, the globs (under results/) of every output it writes, the first of them being
# its main per-slide output, the targets to run, and the fixture holding the uninterrupted reference run. The run
# starts from that reference with the rule's outputs deleted, so only its jobs are left to do; the first main
# output appearing means the stage is under way, and the kill lands while its other jobs are left.
BACKBONE = "tiny"  # config.yaml's offline default
FEATURES = (f"features/{BACKBONE}/{BACKBONE}_5x/*.h5", f"features/{BACKBONE}/{BACKBONE}_20x/*.h5")
#: the patch features of every slide, without the text embeddings extract_all also asks for
FEATURE_TARGETS = tuple(f"results/{p.replace('*', s)}" for p in FEATURES for s in SLIDES)
KILL_CASES = [
    pytest.param("patch", ("patches/*.h5", "qc/patches/*.png"), ("patch_all",), "reference", signal.SIGTERM,
                 id="patch-SIGTERM"),
    pytest.param("extract", FEATURES, FEATURE_TARGETS, "features_reference", signal.SIGKILL, id="extract-SIGKILL"),
]  # fmt: skip


@pytest.fixture(scope="module")
def features_reference(reference, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The reference carried on through feature extraction (5x and 20x features of every slide)."""
    workdir = copy_workdir(reference[0], tmp_path_factory.mktemp("features_reference") / "run")
    proc = run_snakemake(workdir, RERUN_DEMO, *FEATURE_TARGETS)
    return workdir, proc


def start_snakemake(workdir: Path, config: dict, *args: str) -> subprocess.Popen:
    """snakemake in its own process group (so a kill reaches its jobs too), one job at a time."""
    cmd = snakemake_command(workdir, config, *args, cores=1)
    # output to a file: a pipe nobody reads while we wait would fill up and stall snakemake
    with open(workdir / "snakemake_output.txt", "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=snakemake_env(), start_new_session=True)


def kill_once_started(proc: subprocess.Popen, workdir: Path, pattern: str, sig: signal.Signals) -> int:
    """Send `sig` once the first output matching `pattern` exists; return how many existed then."""
    results = workdir / "results"
    deadline = time.monotonic() + 300
    while not (done := list(results.glob(pattern))):
        if proc.poll() is not None:
            output = (workdir / "snakemake_output.txt").read_text()
            pytest.fail(f"snakemake ended before any {pattern} appeared:\n{output[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {pattern} after 300 s")
        time.sleep(0.02)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # the machine went away: snakemake and its jobs die at once
    else:
        proc.send_signal(sig)  # a polite stop (scancel, kill): snakemake ends its jobs itself
    proc.wait(timeout=120)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # nothing of the interrupted run may outlive it
    except ProcessLookupError:
        pass
    return len(done)


@pytest.mark.parametrize("rule,patterns,targets,reference_name,sig", KILL_CASES)
def test_killed_run_resumes_to_identical_results(request, tmp_path, rule, patterns, targets, reference_name, sig):
    reference = request.getfixturevalue(reference_name)[0]
    workdir = copy_workdir(reference, tmp_path / "run")
    for pattern in patterns:
        for path in (workdir / "results").glob(pattern):
            path.unlink()
    expected = len(list((reference / "results").glob(patterns[0])))
    assert expected == len(SLIDES)

    proc = start_snakemake(workdir, RERUN_DEMO, *targets)
    done_at_kill = kill_once_started(proc, workdir, patterns[0], sig)
    assert proc.returncode != 0, "snakemake finished before the kill"
    assert done_at_kill < expected, f"all {expected} {rule} outputs existed at the kill: not mid-stage"

    # what a user does next: drop the dead run's lock, rerun; the interrupted jobs are redone
    run_snakemake(workdir, RERUN_DEMO, "--unlock")
    resumed = run_snakemake(workdir, RERUN_DEMO, *targets, "--rerun-incomplete")
    assert set(job_counts(resumed)) - set(targets) == {rule}, job_counts(resumed)
    assert job_counts(resumed)[rule] >= expected - done_at_kill
    assert_same_results(workdir / "results", reference / "results")
    assert not any((workdir / ".snakemake" / "incomplete").rglob("*"))
    assert not job_counts(run_snakemake(workdir, RERUN_DEMO, *targets, "-n"))


def test_a_killed_atomic_write_leaves_no_stray_file_once_redone(tmp_path):
    """A job killed inside an atomic write leaves its temporary file; the job's rerun must not leave it behind."""
    from pipeline.formats import write_bytes_atomic

    dest = tmp_path / "features" / "slide.h5"
    killed = subprocess.run(
        [sys.executable, "-c",
         "import os, signal, sys\n"
         "from pipeline.formats import atomic_path\n"
         "with atomic_path(sys.argv[1]) as tmp:\n"
         "    tmp.write_bytes(b'half')\n"
         "    os.kill(os.getpid(), signal.SIGKILL)\n",
         str(dest)],
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert not dest.exists() and [p.name for p in dest.parent.iterdir()], "the killed write left nothing to test"

    write_bytes_atomic(dest, b"whole")  # the rerun of the job
    assert dest.read_bytes() == b"whole"
    assert [p.name for p in dest.parent.iterdir()] == [dest.name], "a stale temporary file of the killed write remains"
