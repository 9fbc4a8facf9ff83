"""The command line itself: slide-id checks, status records whatever fails (argument parsing included), and
every error printed once."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from pipeline import status
from pipeline.cli import main
from pipeline.commands._common import check_slide_id


def segment_args(tmp_path, slide, slide_id=None, status_dir=None) -> list[str]:
    args = ["segment", "--slide", str(slide)]
    if slide_id is not None:
        args += ["--slide-id", slide_id]
    args += ["--status-dir", str(status_dir or tmp_path / "status")]
    for flag, name in (("--mask", "m.png"), ("--geojson", "g.geojson"), ("--stats", "s.json"), ("--qc", "q.png")):
        args += [flag, str(tmp_path / "out" / name)]
    return args


@pytest.mark.parametrize(
    "value,why",
    [("", "empty"), ("  ", "empty"), ("../../x", "path separator"), ("a/b", "path separator"),
     ("a\\b", "path separator"), ("..", "'..'"), ("a..b", "'..'"), (".hidden", "starts with '.'")],
)  # fmt: skip
def test_bad_slide_ids_are_refused_with_the_reason(value, why):
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        check_slide_id(value)


@pytest.mark.parametrize("value", ["TCGA-AA-1000-01Z-00-DX1.0F1E2D", "demo_solid_00", "my slide é", "a.b"])
def test_good_slide_ids_pass(value):
    assert check_slide_id(value) == value


def test_status_record_refuses_names_outside_its_folder(tmp_path):
    with pytest.raises(ValueError, match="path separator"):
        status.record(tmp_path / "status", "segment", "../../x", False, "boom")
    with pytest.raises(ValueError, match="stage"):
        status.record(tmp_path / "status", "../x", "s", False, "boom")
    assert not any(tmp_path.rglob("*.json"))


@pytest.mark.parametrize("command", ["segment", "patch", "extract", "hierarchy"])
def test_slide_id_with_a_path_writes_nothing_outside(tmp_path, command, capsys):
    status_dir = tmp_path / "a" / "b" / "status"
    flags = {
        "segment": segment_args(tmp_path, tmp_path / "x.svs", "../../x", status_dir)[1:],
        "patch": ["--slide", "x.svs", "--geojson", "g", "--out", "o.h5", "--qc", "q.png"],
        "extract": ["--slide", "x.svs", "--patches", "p.h5", "--backbone", "tiny", "--out-5x", "a", "--out-20x", "b"],
        "hierarchy": ["--features-5x", "a.h5", "--features-20x", "b.h5", "--out", "o.h5", "--report", "r.json"],
    }[command]
    if command != "segment":
        flags += ["--slide-id", "../../x", "--status-dir", str(status_dir)]
    with pytest.raises(SystemExit) as exit_info:
        main([command, *flags])
    assert exit_info.value.code == 2
    assert "invalid slide id '../../x': it contains a path separator" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.json")), list(tmp_path.rglob("*.json"))


def test_default_slide_id_from_a_hidden_file_name_is_refused(tmp_path):
    assert main(segment_args(tmp_path, tmp_path / ".hidden.svs")) == 1
    assert not any(tmp_path.rglob("*.json"))


def test_argument_errors_still_record_the_failure(tmp_path, capsys):
    """An unquoted path with spaces splits into extra words: argparse fails, the slide's record says why."""
    args = segment_args(tmp_path, "my slide é.svs", "spaced")
    words = args[:2] + args[2].split() + args[3:]
    with pytest.raises(SystemExit):
        main(words)
    rec = json.loads((tmp_path / "status" / "segment" / "spaced.json").read_text())
    assert rec["status"] == "failed" and "unrecognized arguments: slide é.svs" in rec["reason"]
    # a missing required flag too, with the id taken from the slide file name when --slide-id is absent
    with pytest.raises(SystemExit):
        main(["patch", "--slide", str(tmp_path / "s7.svs"), "--status-dir", str(tmp_path / "status")])
    rec = json.loads((tmp_path / "status" / "patch" / "s7.json").read_text())
    assert rec["status"] == "failed" and "required" in rec["reason"] and "--geojson" in rec["reason"]
    # hierarchy records under its --status-stage
    with pytest.raises(SystemExit):
        main(["hierarchy", "--features-5x", "f/s8.h5", "--status-dir", str(tmp_path / "status"),
              "--status-stage", "hierarchy_plip", "--misaligned", "sideways"])  # fmt: skip
    rec = json.loads((tmp_path / "status" / "hierarchy_plip" / "s8.json").read_text())
    assert "invalid choice: 'sideways'" in rec["reason"]
    capsys.readouterr()


def test_gdc_download_failure_is_recorded(tmp_path):
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("id\tfilename\tmd5\tsize\tstate\n")
    args = ["gdc-download", "--manifest", str(manifest), "--slide", "TCGA-XX", "--out", str(tmp_path / "x.svs"),
            "--status-dir", str(tmp_path / "status"), "--api-url", "http://127.0.0.1:9", "--retries", "0"]
    assert main(args) == 1
    rec = json.loads((tmp_path / "status" / "download" / "TCGA-XX.json").read_text())
    assert rec["status"] == "failed" and "lists no files" in rec["reason"]


def test_every_error_is_printed_once(tmp_path):
    missing = tmp_path / "nope.svs"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *segment_args(tmp_path, missing, "s1")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    message = f"file {missing} does not exist"
    assert (proc.stdout + proc.stderr).count(message) == 1, proc.stderr
    assert "slide 's1'" in proc.stderr


# --- extract checks the patch file against the slide it claims ------------------------------------------


@pytest.fixture(scope="module")
def cmu_patch_file(tmp_path_factory, cmu1):
    """patches/CMU-1-Small-Region.h5 as the segment and patch commands write it."""
    d = tmp_path_factory.mktemp("cmu")
    assert main(["segment", "--slide", str(cmu1), "--mask", str(d / "m.png"), "--geojson", str(d / "g.geojson"),
                 "--stats", str(d / "s.json"), "--qc", str(d / "q.png")]) == 0  # fmt: skip
    assert main(["patch", "--slide", str(cmu1), "--geojson", str(d / "g.geojson"), "--tissue-stats",
                 str(d / "s.json"), "--out", str(d / "CMU-1-Small-Region.h5"), "--qc", str(d / "qp.png")]) == 0  # fmt: skip
    return d / "CMU-1-Small-Region.h5"


def test_patching_records_the_slide_it_was_made_from(cmu_patch_file, cmu1):
    from pipeline.formats import read_patches
    from pipeline.slide import open_slide

    attrs = read_patches(cmu_patch_file).attrs
    with open_slide(cmu1) as slide:
        assert (attrs["level0_width"], attrs["level0_height"]) == tuple(slide.dimensions)
    assert attrs["slide_id"] == "CMU-1-Small-Region"


def test_extract_refuses_another_slides_patch_file_naming_both(tmp_path, cmu_patch_file, fixtures, capsys):
    other = fixtures / "small.svs"
    args = ["extract", "--slide", str(other), "--slide-id", "small", "--patches", str(cmu_patch_file),
            "--backbone", "tiny", "--weights", "random", "--device", "cpu", "--no-progress",
            "--out-5x", str(tmp_path / "f5.h5"), "--out-20x", str(tmp_path / "f20.h5"),
            "--status-dir", str(tmp_path / "status")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "slide 'small'" in err and "made for slide 'CMU-1-Small-Region'" in err and "2220x2967" in err, err
    rec = json.loads((tmp_path / "status" / "extract" / "small.json").read_text())
    assert rec["status"] == "failed" and "belongs to another slide" in rec["reason"]
    assert not (tmp_path / "f5.h5").exists()


def test_old_patch_files_without_a_recorded_size_are_accepted_with_a_warning(cmu_patch_file, cmu1, caplog):
    from pipeline.errors import SlideError
    from pipeline.formats import read_patches
    from pipeline.slide import check_patches_match, open_slide

    attrs = {k: v for k, v in read_patches(cmu_patch_file).attrs.items() if k not in ("level0_width", "level0_height")}
    with open_slide(cmu1) as slide:
        check_patches_match(slide, attrs, cmu_patch_file)
        assert "records no level-0 size" in caplog.text
        with pytest.raises(SlideError, match="made for slide 'other'"):
            check_patches_match(slide, {**attrs, "slide_id": "other"}, cmu_patch_file)
