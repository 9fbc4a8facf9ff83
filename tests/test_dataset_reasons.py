"""dataset.csv leaves out every slide it cannot use, in the same run, and dropped.csv gives each one's real reason."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import status
from pipeline.cli import main

from cohorts import write_placeholder_features, write_placeholder_patches


def _slide_files(root: Path, slide: str, n: int, empty_reason: str = "") -> None:
    """A 20x slide's patch file of `n` patches (with its empty_reason) and its 5x and hierarchical features."""
    write_placeholder_patches(root / "p" / f"{slide}.h5", n, mpp=0.5, level0_magnification=20,
                              empty_reason=empty_reason)  # fmt: skip
    write_placeholder_features(root / "f5" / f"{slide}.h5", root / "fh" / f"{slide}.h5", n)


def test_dropped_gives_each_slide_its_real_reason(tmp_path):
    slides = {"good": 5, "blank": 0, "few": 1, "failed": 0}
    (tmp_path / "sheet.csv").write_text(
        "slide_id,case_id,label\n" + "".join(f"{s},c{i},A\n" for i, s in enumerate(slides))
    )
    for slide, n in slides.items():
        if slide != "failed":
            _slide_files(tmp_path, slide, n, "no tissue found by segmentation" if n == 0 else "")
    status.record(tmp_path / "status", "extract", "failed", False, "slide 'failed': cannot decode pixels")
    status.record(tmp_path / "status", "segment", "failed", True)
    args = ["dataset", "--sheet", str(tmp_path / "sheet.csv"), "--labels", "A",
            "--status-dir", str(tmp_path / "status"), "--min-patches", "2",
            "--out", str(tmp_path / "dataset.csv"), "--dropped", str(tmp_path / "dropped.csv")]  # fmt: skip
    for flag, folder in (("--patches", "p"), ("--features-5x", "f5"), ("--hierarchical", "fh")):
        args += [flag, *(str(tmp_path / folder / f"{s}.h5") for s in slides if s != "failed")]
    assert main(args) == 0
    assert pd.read_csv(tmp_path / "dataset.csv")["slide_id"].tolist() == ["good"]
    dropped = pd.read_csv(tmp_path / "dropped.csv", dtype=str, keep_default_na=False)
    reasons = dict(zip(dropped["slide_id"], dropped["reason"]))
    assert reasons == {
        "blank": "no tissue: no tissue found by segmentation",
        "few": "1 5x patches, below the minimum of 2 (cohort.min_patches)",
        "failed": "extract failed: slide 'failed': cannot decode pixels",
    }


def test_a_no_tissue_patch_record_leaves_the_slide_out_of_cohort_stages(tmp_path):
    status.record(tmp_path, "patch", "blank", True, f"{status.NO_TISSUE}: no tissue found by segmentation")
    status.record(tmp_path, "patch", "good", True)
    status.record(tmp_path, "download", "lost", False, "md5 mismatch")
    assert status.left_out(tmp_path) == {
        "blank": "no tissue: no tissue found by segmentation",
        "lost": "download failed: md5 mismatch",
    }
    assert status.left_out(tmp_path / "absent") == {}


def test_a_slide_fixed_by_a_newer_mpp_override_rejoins_the_cohort_stages_in_the_same_run(tmp_path):
    """A failed slide named in an override CSV written after its failure is retried now (cohort stages wait for it);
    once it fails again after the CSV, it is left out as usual."""
    import os
    import time

    from pipeline import status
    from pipeline.wiring import cohort as ws

    status_dir = tmp_path / "status"
    status.record(status_dir, "segment", "boxes", False, "mpp 352.8 is not a brightfield scan")
    status.record(status_dir, "segment", "other", False, "cannot decode pixels")
    overrides = tmp_path / "mpp.csv"
    overrides.write_text("slide_id,mpp\nboxes,0.5\n")
    later = time.time() + 5
    os.utime(overrides, (later, later))
    assert set(status.left_out(status_dir)) == {"boxes", "other"}
    assert ws.retried_by_overrides(status_dir, overrides) == {"boxes"}
    assert ws.retried_by_overrides(status_dir, "") == set()
    earlier = time.time() - 5
    os.utime(overrides, (earlier, earlier))  # the override predates the failure: it did not fix it
    assert ws.retried_by_overrides(status_dir, overrides) == set()
