"""GDC source against a real loopback HTTP server (tests/gdc_server.py): query, labels, manifest, downloads.

No test sleeps: the client's `sleep` is replaced by a recorder, so backoff and Retry-After are checked as the
delays the client asked for.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main as cli_main
from pipeline.errors import PipelineError
from pipeline.gdc import (
    GdcClient,
    ManifestEntry,
    RetryPolicy,
    download_file,
    download_slide,
    get_preset,
    read_manifest,
    read_token,
    run_query,
    sanitize_filename,
    write_manifest,
)
from pipeline.gdc.client import parse_retry_after
from pipeline.gdc.manifest import MANIFEST_COLUMNS
from pipeline.sheet import load_sheet_schema, normalize_local_sheet, read_local_sheet
from pipeline.wiring.gdc import client_args, cohort_slide_ids, query_args, slide_file, slide_pattern

from gdc_server import FakeFile, Fault, GdcServer

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
TOKEN = "s3cr3t-T0KEN-value-that-must-never-leak-0123456789"


def blob(seed: int, size: int = 150_000) -> bytes:
    return random.Random(seed).randbytes(size)


def slide(project: str, n: int, **kw) -> FakeFile:
    barcode = f"TCGA-{project[-2:]}-{n:04d}"
    name = kw.pop("file_name", f"{barcode}-01Z-00-DX1.{n:08d}-aaaa-bbbb-cccc-000000000000.svs")
    return FakeFile(
        file_name=name, data=blob(n, kw.pop("size", 40_000 + n)), project=project, submitter_id=barcode, **kw
    )


def nsclc_files() -> list[FakeFile]:
    files = [slide("TCGA-LUAD", i) for i in range(1, 8)] + [slide("TCGA-LUSC", i) for i in range(101, 107)]
    files += [  # all of these must be filtered out by the query
        slide("TCGA-LUAD", 201, experimental_strategy="Tissue Slide", file_name="TCGA-AD-0201-01A-01-TS1.x.svs"),
        slide("TCGA-LUAD", 202, access="controlled"),
        slide("TCGA-BRCA", 203, diagnoses=["Infiltrating duct carcinoma, NOS"]),
        slide("TCGA-LUSC", 204, data_format="TIFF"),
    ]
    return files


def brca_files() -> list[FakeFile]:
    dx = (
        ["Infiltrating duct carcinoma, NOS"] * 5
        + ["Lobular carcinoma, NOS"] * 3
        + ["Infiltrating duct and lobular carcinoma"] * 2
        + ["Mucinous adenocarcinoma"]
    )
    files = [slide("TCGA-BRCA", 300 + i, diagnoses=[d]) for i, d in enumerate(dx)]
    files.append(slide("TCGA-BRCA", 320, diagnoses=[]))  # diagnosis not reported
    return files


@pytest.fixture
def sleeps() -> list[float]:
    return []


def client_for(server: GdcServer, sleeps: list[float], token: str | None = None, retries: int = 3) -> GdcClient:
    policy = RetryPolicy(retries=retries, backoff_base=0.01, jitter=0.0, timeout=10)
    return GdcClient(server.url, token=token, policy=policy, sleep=sleeps.append)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- query, presets, manifest


def test_query_gathers_every_page_and_matches_the_server(tmp_path, sleeps):
    files = nsclc_files()
    with GdcServer(files) as server:
        result = run_query(
            client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / "m.tsv", tmp_path / "c.csv",
            tmp_path / "s.json", page_size=4,
        )  # fmt: skip
        posts = [json.loads(r.body) for r in server.requests if r.method == "POST"]
    expected = {f.file_id: f for f in files[:13]}  # the 13 open diagnostic SVS of LUAD/LUSC
    entries = read_manifest(tmp_path / "m.tsv")
    assert {e.id: (e.filename, e.md5, e.size) for e in entries} == {
        i: (f.file_name, f.md5, len(f.data)) for i, f in expected.items()
    }
    assert [p["from"] for p in posts] == [0, 4, 8, 12]  # 4 pages of 4 for 13 hits
    assert all(p["size"] == 4 and p["sort"] == "file_id:asc" for p in posts)
    fields = posts[0]["fields"].split(",")
    assert {"file_id", "file_name", "md5sum", "file_size", "cases.submitter_id", "cases.project.project_id",
            "cases.diagnoses.primary_diagnosis"} <= set(fields)  # fmt: skip
    assert [e.filename for e in entries] == sorted(e.filename for e in entries)
    assert result.per_class() == {"LUAD": 7, "LUSC": 6}
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["per_class"] == {"LUAD": 7, "LUSC": 6} and summary["files_found"] == 13


def test_query_is_deterministic_whatever_the_page_size(tmp_path, sleeps):
    with GdcServer(nsclc_files()) as server:
        for size in (3, 100):
            run_query(client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / f"m{size}.tsv",
                      tmp_path / f"c{size}.csv", page_size=size)  # fmt: skip
    assert (tmp_path / "m3.tsv").read_bytes() == (tmp_path / "m100.tsv").read_bytes()
    assert (tmp_path / "c3.csv").read_bytes() == (tmp_path / "c100.csv").read_bytes()


def test_nsclc_cohort_sheet_columns_and_labels(tmp_path, sleeps):
    files = nsclc_files()
    with GdcServer(files) as server:
        run_query(client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / "m.tsv", tmp_path / "c.csv")
    rows = read_csv(tmp_path / "c.csv")
    assert list(rows[0]) == ["file_id", "slide_id", "case_id", "project", "primary_diagnosis", "label", "event",
                             "time_days", "follow_up"]  # fmt: skip
    by_id = {f.file_id: f for f in files}
    for row in rows:
        f = by_id[row["file_id"]]
        assert row["label"] == {"TCGA-LUAD": "LUAD", "TCGA-LUSC": "LUSC"}[f.project]
        assert row["slide_id"] == f.file_name.removesuffix(".svs")
        assert row["case_id"] == f.submitter_id[:12] and len(row["case_id"]) == 12
    assert [r["label"] for r in rows] == ["LUAD"] * 7 + ["LUSC"] * 6


def test_rcc_labels_by_project_and_narrowing(tmp_path, sleeps):
    files = [slide(p, 400 + i) for i, p in enumerate(["TCGA-KIRC"] * 3 + ["TCGA-KIRP"] * 2 + ["TCGA-KICH"] * 2)]
    with GdcServer(files) as server:
        full = run_query(client_for(server, sleeps), get_preset("tcga_rcc"), tmp_path / "m.tsv", tmp_path / "c.csv")
        two = run_query(client_for(server, sleeps), get_preset("tcga_rcc", ["TCGA-KIRC", "TCGA-KIRP"]),
                        tmp_path / "m2.tsv", tmp_path / "c2.csv")  # fmt: skip
    assert full.per_class() == {"CCRCC": 3, "CHRCC": 2, "PRCC": 2}
    assert two.per_class() == {"CCRCC": 3, "PRCC": 2}
    with pytest.raises(PipelineError, match="TCGA-LUAD are not part of task tcga_rcc"):
        get_preset("tcga_rcc", ["TCGA-LUAD"])
    with pytest.raises(PipelineError, match="unknown GDC task 'tcga_xyz'.*tcga_brca"):
        get_preset("tcga_xyz")


def test_brca_labels_from_diagnosis_and_counts_the_rest(tmp_path, sleeps):
    with GdcServer(brca_files()) as server:
        result = run_query(client_for(server, sleeps), get_preset("tcga_brca"), tmp_path / "m.tsv",
                           tmp_path / "c.csv", tmp_path / "s.json")  # fmt: skip
    rows = read_csv(tmp_path / "c.csv")
    assert {r["primary_diagnosis"]: r["label"] for r in rows} == {
        "Infiltrating duct carcinoma, NOS": "IDC",
        "Lobular carcinoma, NOS": "ILC",
    }
    assert result.per_class() == {"IDC": 5, "ILC": 3}
    left_out = json.loads((tmp_path / "s.json").read_text())["left_out"]
    assert left_out == {
        "diagnosis Infiltrating duct and lobular carcinoma": 2,
        "diagnosis Mucinous adenocarcinoma": 1,
        "diagnosis not reported": 1,
    }
    assert len(read_manifest(tmp_path / "m.tsv")) == 8  # the manifest holds only labelled slides


def test_max_slides_per_class_takes_the_first_by_slide_id(tmp_path, sleeps):
    files = nsclc_files()
    with GdcServer(files) as server:
        result = run_query(client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / "m.tsv",
                           tmp_path / "c.csv", max_per_class=2)  # fmt: skip
    rows = read_csv(tmp_path / "c.csv")
    luad = sorted(f.file_name.removesuffix(".svs") for f in files[:7])
    assert [r["slide_id"] for r in rows if r["label"] == "LUAD"] == luad[:2]
    assert result.per_class() == {"LUAD": 2, "LUSC": 2}
    assert dict(result.capped) == {"LUAD": 5, "LUSC": 4}
    assert len(read_manifest(tmp_path / "m.tsv")) == 4


def test_query_retries_a_503_on_files(tmp_path, sleeps):
    with GdcServer(nsclc_files()) as server:
        server.files_faults.append(Fault("status", 503))
        result = run_query(client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / "m.tsv", tmp_path / "c.csv")
    assert result.per_class() == {"LUAD": 7, "LUSC": 6}
    assert sleeps == [0.01]


# ---------------------------------------------------------------- clinical: survival labels

#: submitter number -> (clinical records as the GDC nests them, expected event, time_days, follow_up)
CLINICAL = {
    1: ({"demographic": {"vital_status": "Dead", "days_to_death": 400},
         "diagnoses": [{"days_to_last_follow_up": None}],
         "follow_ups": [{"days_to_follow_up": 120}, {"days_to_follow_up": 380}]}, "1", "400", ""),
    2: ({"demographic": {"vital_status": "Alive"},  # the longest follow-up is in follow_ups
         "diagnoses": [{"days_to_last_follow_up": 200}, {"days_to_last_follow_up": None}],
         "follow_ups": [{"days_to_follow_up": 650}, {"days_to_follow_up": "Not Reported"}, {}]}, "0", "650", ""),
    3: ({"demographic": {"vital_status": "Alive", "days_to_death": None},  # ... here in diagnoses
         "diagnoses": [{"days_to_last_follow_up": 900}], "follow_ups": [{"days_to_follow_up": 30}]}, "0", "900", ""),
    4: ({"demographic": {"vital_status": "Dead", "days_to_death": None},  # no fallback to the follow-up
         "follow_ups": [{"days_to_follow_up": 500}]}, "", "", "dead without days_to_death"),
    5: ({"demographic": {"vital_status": "Not Reported", "days_to_death": 10}}, "", "", "vital status 'Not Reported'"),
    6: ({"demographic": {"vital_status": "Alive"}, "diagnoses": [{"days_to_last_follow_up": "Unknown"}],
         "follow_ups": [{"days_to_follow_up": "not reported"}]}, "", "", "alive without any follow-up days"),
    7: ({"demographic": {"vital_status": "Dead", "days_to_death": -3}}, "", "", "negative days_to_death -3"),
    8: ({}, "", "", "no demographic record"),
    9: ({"demographic": [{"vital_status": "Alive"}], "follow_ups": [{"days_to_follow_up": 0}]}, "0", "0", ""),
    10: ({"demographic": [{"vital_status": "Dead", "days_to_death": 12.5}]}, "1", "12.5", ""),
    11: ({"demographic": {"vital_status": "Alive"}, "diagnoses": [{"days_to_last_follow_up": -40}],
          "follow_ups": [{"days_to_follow_up": 75}]}, "0", "75", ""),  # a negative one is skipped, not the maximum
    12: ({"demographic": {"vital_status": "Alive"}}, "", "", "alive without any follow-up days"),
}  # fmt: skip


def clinical_files() -> list[FakeFile]:
    files = [slide("TCGA-LUAD" if n % 2 else "TCGA-LUSC", n, clinical=c) for n, (c, *_) in CLINICAL.items()]
    # a second slide of case 1 (same submitter): counted once per case in the summary
    twin = slide("TCGA-LUAD", 1, clinical=CLINICAL[1][0], file_name="TCGA-AD-0001-01Z-00-DX2.twin.svs")
    return files + [twin]


def test_gdc_server_projects_nested_clinical_fields_like_the_gdc():
    from gdc_server import _project

    hit = _project(slide("TCGA-LUAD", 1, clinical=CLINICAL[1][0], diagnoses=["Adenocarcinoma, NOS"]).hit(),
                   ["file_id", "cases.submitter_id", "cases.demographic.vital_status",
                    "cases.demographic.days_to_death", "cases.diagnoses.days_to_last_follow_up",
                    "cases.follow_ups.days_to_follow_up"])  # fmt: skip
    assert hit["cases"] == [{
        "submitter_id": "TCGA-AD-0001",
        "demographic": {"vital_status": "Dead", "days_to_death": 400},
        "diagnoses": [{"days_to_last_follow_up": None}],  # null stays null; primary_diagnosis was not asked for
        "follow_ups": [{"days_to_follow_up": 120}, {"days_to_follow_up": 380}],
    }]  # fmt: skip
    bare = slide("TCGA-LUAD", 2, clinical={"follow_ups": [{"other": 1}, {"days_to_follow_up": 9}]}).hit()
    projected = _project(bare, ["cases.submitter_id", "cases.demographic.vital_status",
                                "cases.follow_ups.days_to_follow_up"])  # fmt: skip
    # a record without the field is left out, and so is a demographic the case does not have
    assert projected["cases"] == [{"submitter_id": "TCGA-AD-0002", "follow_ups": [{"days_to_follow_up": 9}]}]


def test_query_reads_survival_labels_into_the_cohort_sheet_and_summary(tmp_path, sleeps):
    files = clinical_files()
    with GdcServer(files) as server:
        run_query(client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / "m.tsv", tmp_path / "c.csv",
                  tmp_path / "s.json", page_size=5)  # fmt: skip
        fields = json.loads(next(r.body for r in server.requests if r.method == "POST"))["fields"].split(",")
    assert {"cases.demographic.vital_status", "cases.demographic.days_to_death",
            "cases.diagnoses.days_to_last_follow_up", "cases.follow_ups.days_to_follow_up"} <= set(fields)  # fmt: skip
    rows = {r["file_id"]: r for r in read_csv(tmp_path / "c.csv")}
    assert len(rows) == len(files)  # no slide is left out for missing follow-up
    for f in files:
        n = int(f.submitter_id.rsplit("-", 1)[1])
        _, event, time, note = CLINICAL[n]
        row = rows[f.file_id]
        assert (row["event"], row["time_days"], row["follow_up"]) == (event, time, note), f.submitter_id
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["cases"] == 12 and summary["cases_with_follow_up"] == 6
    assert summary["survival_unusable"] == {
        "alive without any follow-up days": 2,
        "dead without days_to_death": 1,
        "negative days_to_death -3": 1,
        "no demographic record": 1,
        "vital status 'Not Reported'": 1,
    }


def test_user_manifest_keeps_the_survival_labels(tmp_path, sleeps):
    files = clinical_files()
    user = tmp_path / "portal_manifest.txt"
    write_manifest(user, [ManifestEntry(f.file_id, f.file_name, f.md5, len(f.data)) for f in files[:2]])
    with GdcServer(files) as server:
        run_query(client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / "m.tsv", tmp_path / "c.csv",
                  user_manifest=user)  # fmt: skip
    rows = {r["file_id"]: (r["event"], r["time_days"]) for r in read_csv(tmp_path / "c.csv")}
    assert rows == {files[0].file_id: ("1", "400"), files[1].file_id: ("0", "650")}


@pytest.mark.parametrize(
    "case, expected",
    [
        ({"demographic": {"vital_status": "dead", "days_to_death": "31"}}, (1, 31.0)),  # numeric text, any case
        ({"demographic": {"vital_status": "Dead", "days_to_death": "Not Reported"}}, "dead without days_to_death"),
        ({"demographic": {"vital_status": "Dead", "days_to_death": True}}, "dead without days_to_death"),
        ({"demographic": {"vital_status": "Dead", "days_to_death": 0}}, (1, 0.0)),
        ({"demographic": {"vital_status": None}}, "vital status missing"),
        ({"demographic": {"vital_status": "Unknown"}}, "vital status 'Unknown'"),
        ({"demographic": [{"vital_status": "Alive"}, {"vital_status": "Dead", "days_to_death": 3}]},
         "2 differing demographic records"),
        ({"demographic": {"vital_status": "Alive"}, "follow_ups": [{"days_to_follow_up": -2}]},
         "alive without any follow-up days (negative days_to_follow_up -2)"),
        ({"demographic": {"vital_status": "Alive"}, "diagnoses": [{"days_to_last_follow_up": float("nan")}],
          "follow_ups": None}, "alive without any follow-up days"),
    ],
)
def test_survival_of_one_case(case, expected):
    from pipeline.gdc.clinical import Survival, survival_of

    assert survival_of(case) == (Survival(*expected) if isinstance(expected, tuple) else expected)


def test_gdc_cohort_survival_columns_pass_through_the_local_sheet_step(tmp_path, sleeps):
    with GdcServer(clinical_files()) as server:
        run_query(client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / "m.tsv", tmp_path / "c.csv")
    normalize_local_sheet(tmp_path / "c.csv", tmp_path / "slides", tmp_path / "sheet.csv", allow_missing=True)
    gdc = {r["slide_id"]: r for r in read_csv(tmp_path / "c.csv")}
    out = read_csv(tmp_path / "sheet.csv")
    assert list(out[0]) == ["slide_id", "case_id", "label", "file", "event", "time_days", "follow_up"]
    assert {r["slide_id"]: (r["event"], r["time_days"], r["follow_up"]) for r in out} == {
        sid: (r["event"], r["time_days"], r["follow_up"]) for sid, r in gdc.items()
    }


def test_manifest_round_trips_in_gdc_client_format(tmp_path):
    entries = [
        ManifestEntry("0b6c1f7e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "b.svs", "0" * 32, 10, "released"),
        ManifestEntry("1b6c1f7e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "a.svs", "f" * 32, 2**33, "released"),
    ]
    write_manifest(tmp_path / "m.tsv", entries)
    lines = (tmp_path / "m.tsv").read_text().splitlines()
    assert lines[0] == "\t".join(MANIFEST_COLUMNS) == "id\tfilename\tmd5\tsize\tstate"
    assert lines[1] == f"{entries[1].id}\ta.svs\t{'f' * 32}\t{2**33}\treleased"
    assert read_manifest(tmp_path / "m.tsv") == sorted(entries, key=lambda e: e.filename)


@pytest.mark.parametrize(
    "body, message",
    [
        ("id\tfilename\tmd5\nx\ty\tz\n", "missing column.*size"),
        ("id\tfilename\tmd5\tsize\tstate\n../x\ta.svs\t" + "0" * 32 + "\t1\treleased\n", "line 2.*not a GDC UUID"),
        ("id\tfilename\tmd5\tsize\tstate\n0b6c1f7e-1c2d-4e5f-8a9b-0c1d2e3f4a5b\ta.svs\tabc\t1\treleased\n",
         "line 2.*md5 'abc'"),  # fmt: skip
        ("id\tfilename\tmd5\tsize\tstate\n0b6c1f7e-1c2d-4e5f-8a9b-0c1d2e3f4a5b\ta.svs\t" + "0" * 32 + "\tbig\treleased\n",
         "size 'big'"),  # fmt: skip
        ("id\tfilename\tmd5\tsize\tstate\n", "lists no files"),
    ],
)
def test_bad_manifests_are_refused_by_line(tmp_path, body, message):
    (tmp_path / "m.tsv").write_text(body)
    with pytest.raises(PipelineError, match=message):
        read_manifest(tmp_path / "m.tsv")


def test_user_manifest_replaces_the_query(tmp_path, sleeps):
    files = brca_files()
    chosen = [files[0], files[5], files[8]]  # IDC, ILC, mixed (left out)
    user = tmp_path / "portal_manifest.txt"
    write_manifest(user, [ManifestEntry(f.file_id, f.file_name, f.md5, len(f.data)) for f in chosen])
    with GdcServer(files) as server:
        result = run_query(client_for(server, sleeps), get_preset("tcga_brca"), tmp_path / "m.tsv",
                           tmp_path / "c.csv", user_manifest=user)  # fmt: skip
        stale = tmp_path / "stale.txt"
        write_manifest(stale, [ManifestEntry(files[0].file_id, files[0].file_name, "1" * 32, len(files[0].data))])
        with pytest.raises(PipelineError, match="stale"):
            run_query(client_for(server, sleeps), get_preset("tcga_brca"), tmp_path / "x.tsv", tmp_path / "x.csv",
                      user_manifest=stale)  # fmt: skip
        unknown = tmp_path / "unknown.txt"
        write_manifest(unknown, [ManifestEntry("00000000-0000-4000-8000-000000000000", "n.svs", "1" * 32, 5)])
        with pytest.raises(PipelineError, match="unknown to .*00000000-0000-4000-8000-000000000000"):
            run_query(client_for(server, sleeps), get_preset("tcga_brca"), tmp_path / "x.tsv", tmp_path / "x.csv",
                      user_manifest=unknown)  # fmt: skip
    assert result.per_class() == {"IDC": 1, "ILC": 1}
    assert dict(result.excluded) == {"diagnosis Infiltrating duct and lobular carcinoma": 1}
    assert {e.id for e in read_manifest(tmp_path / "m.tsv")} == {files[0].file_id, files[5].file_id}


def test_hostile_file_names_are_sanitised_in_the_manifest(tmp_path, sleeps):
    files = [slide("TCGA-LUAD", 1, file_name="../../etc/x.svs"), slide("TCGA-LUSC", 2, file_name="..\\..\\boot.ini")]
    with GdcServer(files) as server:
        run_query(client_for(server, sleeps), get_preset("tcga_nsclc"), tmp_path / "m.tsv", tmp_path / "c.csv")
    assert sorted(e.filename for e in read_manifest(tmp_path / "m.tsv")) == ["boot.ini", "etc_x.svs"]
    assert sorted(r["slide_id"] for r in read_csv(tmp_path / "c.csv")) == ["boot", "etc_x"]


@pytest.mark.parametrize(
    "name, safe",
    [
        ("../../etc/x", "etc_x"),
        ("/abs/path/s.svs", "abs_path_s.svs"),
        ("..", "FALLBACK"),
        ("", "FALLBACK"),
        (".hidden.svs", "hidden.svs"),
        ("a\tb\nc.svs", "a_b_c.svs"),
        ("-rf slide.svs", "rf_slide.svs"),
        ("TCGA-05-4244-01Z-00-DX1.D4FF32CD-38CF-40EA-8213-45C2B100AC01.svs",
         "TCGA-05-4244-01Z-00-DX1.D4FF32CD-38CF-40EA-8213-45C2B100AC01.svs"),  # fmt: skip
    ],
)
def test_sanitize_filename(name, safe):
    assert sanitize_filename(name, fallback="FALLBACK") == safe


# ---------------------------------------------------------------- downloads


def test_plain_download_verifies_and_renames(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    with GdcServer([f]) as server:
        res = download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", size=len(f.data),
                            md5=f.md5, chunk_size=8192)  # fmt: skip
    assert (tmp_path / "s.svs").read_bytes() == f.data
    assert res.requests == 1 and res.fetched == len(f.data) and res.md5 == f.md5
    assert not (tmp_path / "s.svs.partial").exists()


def test_dropped_connection_resumes_with_range(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1, size=300_000)
    with GdcServer([f]) as server:
        server.fault(f.file_id, Fault("drop", after=70_000), Fault("drop", after=100_000))
        res = download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", size=len(f.data),
                            md5=f.md5, chunk_size=8192, progress=False)  # fmt: skip
        ranges = [r.headers.get("Range") for r in server.data_requests()]
    assert ranges == [None, "bytes=70000-", "bytes=170000-"]
    assert (tmp_path / "s.svs").read_bytes() == f.data
    assert res.fetched == len(f.data)  # no byte fetched twice
    assert len(sleeps) == 2


def test_partial_from_an_earlier_run_is_resumed(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    (tmp_path / "s.svs.partial").write_bytes(f.data[:12_345])
    with GdcServer([f]) as server:
        res = download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", size=len(f.data),
                            md5=f.md5)  # fmt: skip
        ranges = [r.headers.get("Range") for r in server.data_requests()]
    assert ranges == ["bytes=12345-"] and res.fetched == len(f.data) - 12_345
    assert (tmp_path / "s.svs").read_bytes() == f.data


def test_partial_longer_than_the_file_starts_over_after_416(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    (tmp_path / "s.svs.partial").write_bytes(f.data + b"stale tail")
    with GdcServer([f]) as server:
        download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", md5=f.md5)  # size unknown
        ranges = [r.headers.get("Range") for r in server.data_requests()]
    assert ranges == [f"bytes={len(f.data) + 10}-", None]
    assert (tmp_path / "s.svs").read_bytes() == f.data


def test_server_that_ignores_range_restarts_the_file(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    with GdcServer([f]) as server:
        server.fault(f.file_id, Fault("drop", after=5000), Fault("ignore_range"))
        download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", size=len(f.data), md5=f.md5)
    assert (tmp_path / "s.svs").read_bytes() == f.data


def test_429_with_retry_after_and_503_are_retried(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    with GdcServer([f]) as server:
        server.fault(f.file_id, Fault("status", 429, retry_after="7"), Fault("status", 503), Fault("status", 502))
        download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", size=len(f.data), md5=f.md5)
        assert len(server.data_requests()) == 4
    assert sleeps == [7.0, 0.02, 0.04]  # Retry-After honoured, then exponential backoff
    assert (tmp_path / "s.svs").read_bytes() == f.data


def test_retry_policy_delays():
    policy = RetryPolicy(backoff_base=1.0, backoff_max=5.0, retry_after_max=60, jitter=0.0)
    assert [policy.delay(a) for a in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(0, retry_after=3600) == 60
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412500.0) == 10.0
    assert parse_retry_after("soon") is None


def test_gives_up_after_retries_with_a_clear_error(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    with GdcServer([f]) as server:
        server.fault(f.file_id, *[Fault("status", 503)] * 10)
        with pytest.raises(PipelineError, match=rf"file {f.file_id} \(s.svs\): download failed 3 times.*HTTP 503"):
            download_file(client_for(server, sleeps, retries=2), f.file_id, dest=tmp_path / "s.svs", md5=f.md5)
    assert not (tmp_path / "s.svs").exists()


def test_corrupt_body_fails_clearly_and_leaves_no_file(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    with GdcServer([f]) as server:
        server.always_corrupt.add(f.file_id)
        with pytest.raises(PipelineError, match=rf"{f.file_id}.*md5 .* expected {f.md5}.*nothing was written"):
            download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", size=len(f.data), md5=f.md5)
        assert len(server.data_requests()) == 2  # one fresh download after the first mismatch
    assert os.listdir(tmp_path) == []


def test_corruption_once_is_healed_by_a_fresh_download(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    with GdcServer([f]) as server:
        server.fault(f.file_id, Fault("corrupt"))
        download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", size=len(f.data), md5=f.md5)
    assert (tmp_path / "s.svs").read_bytes() == f.data


def test_size_mismatch_with_the_manifest_is_an_error(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    with GdcServer([f]) as server:
        with pytest.raises(PipelineError, match=f"server holds {len(f.data)} bytes but the manifest says 5"):
            download_file(client_for(server, sleeps), f.file_id, dest=tmp_path / "s.svs", size=5, md5=f.md5)
    assert not (tmp_path / "s.svs").exists()


def test_present_file_with_right_md5_is_not_downloaded_again(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1)
    with GdcServer([f]) as server:
        client = client_for(server, sleeps)
        download_file(client, f.file_id, dest=tmp_path / "s.svs", size=len(f.data), md5=f.md5)
        again = download_file(client, f.file_id, dest=tmp_path / "s.svs", size=len(f.data), md5=f.md5)
        assert again.skipped and len(server.data_requests()) == 1
        (tmp_path / "s.svs").write_bytes(b"not the slide")  # a wrong file is replaced
        fixed = download_file(client, f.file_id, dest=tmp_path / "s.svs", size=len(f.data), md5=f.md5)
        assert not fixed.skipped and len(server.data_requests()) == 2
    assert (tmp_path / "s.svs").read_bytes() == f.data


def test_hostile_content_disposition_stays_in_the_folder(tmp_path, sleeps):
    f = slide("TCGA-LUAD", 1, file_name="../../escaped.svs")
    out = tmp_path / "a" / "b" / "slides"
    with GdcServer([f]) as server:
        res = download_file(client_for(server, sleeps), f.file_id, dest_dir=out, md5=f.md5)
    assert res.path == out / "escaped.svs" and res.path.read_bytes() == f.data
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["escaped.svs"]


def test_download_slide_from_the_manifest(tmp_path, sleeps):
    files = nsclc_files()[:3]
    with GdcServer(files) as server:
        client = client_for(server, sleeps)
        run_query(client, get_preset("tcga_nsclc"), tmp_path / "m.tsv", tmp_path / "c.csv")
        sid = files[1].file_name.removesuffix(".svs")
        download_slide(client, tmp_path / "m.tsv", sid, tmp_path / "slides" / f"{sid}.svs")
        with pytest.raises(PipelineError, match="slide 'nope' is not listed in"):
            download_slide(client, tmp_path / "m.tsv", "nope", tmp_path / "slides" / "nope.svs")
    assert (tmp_path / "slides" / f"{sid}.svs").read_bytes() == files[1].data


# ---------------------------------------------------------------- token: header only, never in output


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_token_goes_in_the_header_and_nowhere_else(tmp_path):
    f = slide("TCGA-LUAD", 1, access="controlled")
    open_f = slide("TCGA-LUAD", 2)
    token_file = tmp_path / "gdc-token.txt"
    token_file.write_text(TOKEN + "\n")
    write_manifest(tmp_path / "m.tsv", [ManifestEntry(x.file_id, x.file_name, x.md5, len(x.data)) for x in (f, open_f)])
    sid = f.file_name.removesuffix(".svs")
    out = tmp_path / "slides" / f"{sid}.svs"
    common = ["gdc-download", "--manifest", str(tmp_path / "m.tsv"), "--slide", sid, "--out", str(out),
              "--retries", "1", "--backoff", "0.01"]  # fmt: skip
    with GdcServer([f, open_f], token=TOKEN) as server:
        refused = run_cli(*common, "--api-url", server.url)
        wrong = tmp_path / "wrong.txt"
        wrong.write_text("not-the-token")
        rejected = run_cli(*common, "--api-url", server.url, "--token-file", str(wrong))
        ok = run_cli(*common, "--api-url", server.url, "--token-file", str(token_file))
        query = run_cli("gdc-query", "--task", "tcga_nsclc", "--api-url", server.url, "--token-file", str(token_file),
                        "--out-manifest", str(tmp_path / "q.tsv"), "--out-cohort", str(tmp_path / "q.csv"),
                        "--out-summary", str(tmp_path / "q.json"))  # fmt: skip
        sent = [r.headers.get("X-Auth-Token") for r in server.requests]
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr and "controlled-access" in refused.stderr and "--token-file" in refused.stderr
    assert rejected.returncode == 1 and "HTTP 403" in rejected.stderr and "token was refused" in rejected.stderr
    assert ok.returncode == 0, ok.stderr
    assert query.returncode == 0, query.stderr
    assert out.read_bytes() == f.data
    assert sent == [None, "not-the-token", TOKEN, TOKEN]
    for proc in (refused, rejected, ok, query):
        assert TOKEN not in proc.stdout + proc.stderr
    for p in tmp_path.rglob("*"):
        if p.is_file() and p != token_file:
            assert TOKEN.encode() not in p.read_bytes(), p


def test_token_file_errors(tmp_path):
    assert read_token("") is None
    with pytest.raises(PipelineError, match="does not exist"):
        read_token(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(PipelineError, match="is empty"):
        read_token(tmp_path / "empty")
    assert "token" not in repr(GdcClient("http://127.0.0.1:1", token=TOKEN)).replace("token=set", "")
    assert TOKEN not in repr(GdcClient("http://127.0.0.1:1", token=TOKEN))


# ---------------------------------------------------------------- local source


def make_local(tmp_path: Path, rows: list[str], files: list[str]) -> tuple[Path, Path]:
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in files:
        (slides / name).write_bytes(b"slide")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet, slides


def test_local_sheet_is_normalized(tmp_path):
    sheet, slides = make_local(
        tmp_path,
        ["slide_id,case_id,label,file,notes", "s2,p1,LUSC,,x", "s1,p1,LUSC,custom/name.tif,", " s3 , p2 , LUAD ,,"],
        ["s2.svs", "s3.ndpi"],
    )
    (slides / "custom").mkdir()
    (slides / "custom" / "name.tif").write_bytes(b"slide")
    rows = normalize_local_sheet(sheet, slides, tmp_path / "out" / "cohort.csv", labels=["LUAD", "LUSC"])
    assert [(r.slide_id, r.case_id, r.label, r.file.name) for r in rows] == [
        ("s1", "p1", "LUSC", "name.tif"),
        ("s2", "p1", "LUSC", "s2.svs"),
        ("s3", "p2", "LUAD", "s3.ndpi"),
    ]
    out = read_csv(tmp_path / "out" / "cohort.csv")
    assert list(out[0]) == ["slide_id", "case_id", "label", "file", "event", "time_days", "follow_up"]
    assert out[2]["file"] == str(slides / "s3.ndpi")


def test_local_sheet_reports_every_problem_by_line(tmp_path):
    sheet, slides = make_local(
        tmp_path,
        [
            "slide_id,case_id,label",
            "good,p1,LUAD",
            "good,p2,LUSC",  # duplicate slide
            "nofile,p3,LUAD",  # missing file
            "odd,p4,luad",  # unknown label (case)
            "../evil,p5,LUAD",  # slide id with a separator
            "twice,p6,LUAD",  # two candidate files
            "nocase,,LUAD",  # empty case id
        ],
        ["good.svs", "odd.svs", "twice.svs", "twice.tif", "nocase.svs"],
    )
    with pytest.raises(PipelineError) as info:
        read_local_sheet(sheet, slides, labels=["LUAD", "LUSC"])
    msg = str(info.value)
    assert "has 6 problem(s)" in msg
    assert "line 3 (slide 'good'): duplicate slide id, already on line 2" in msg
    assert "line 4 (slide 'nofile'): no slide file nofile.<svs|" in msg and str(slides) in msg
    assert "line 5 (slide 'odd'): unknown label 'luad', expected one of LUAD, LUSC; did you mean 'LUAD'?" in msg
    assert "line 6 (slide '../evil'): column 'slide_id'" in msg
    assert "line 7 (slide 'twice'): several files match (twice.svs, twice.tif)" in msg
    assert "line 8 (slide 'nocase'): 'case_id' is a required column" in msg


def test_local_sheet_missing_column_and_file_column(tmp_path):
    sheet, slides = make_local(tmp_path, ["slide_id,label", "a,X"], ["a.svs"])
    with pytest.raises(PipelineError, match="missing column.*case_id"):
        read_local_sheet(sheet, slides)
    sheet.write_text("slide_id,case_id,label,file\na,p,X,a.svs\nb,p,X,a.svs\nc,p,X,gone.svs\n")
    with pytest.raises(PipelineError) as info:
        read_local_sheet(sheet, slides)
    assert "line 3 (slide 'b'): file " in str(info.value) and "already used by slide 'a'" in str(info.value)
    assert "line 4 (slide 'c'): file " in str(info.value) and "gone.svs does not exist" in str(info.value)


def test_local_sheet_survival_columns(tmp_path):
    sheet, slides = make_local(
        tmp_path,
        ["slide_id,case_id,label,event,time_days,follow_up",
         "a,p1,X,1,400,", "b,p2,X,0,0,lost after surgery", "c,p3,X,0,365.5,", "d,p4,X,,,not asked"],
        ["a.svs", "b.svs", "c.svs", "d.svs"],
    )  # fmt: skip
    normalize_local_sheet(sheet, slides, tmp_path / "out.csv")
    out = {r["slide_id"]: (r["event"], r["time_days"], r["follow_up"]) for r in read_csv(tmp_path / "out.csv")}
    assert out == {"a": ("1", "400", ""), "b": ("0", "0", "lost after surgery"), "c": ("0", "365.5", ""),
                   "d": ("", "", "not asked")}  # fmt: skip
    sheet.write_text("slide_id,case_id,label\na,p1,X\n")  # without the columns: blank, but always present
    normalize_local_sheet(sheet, slides, tmp_path / "plain.csv")
    assert read_csv(tmp_path / "plain.csv")[0] == {
        "slide_id": "a", "case_id": "p1", "label": "X", "file": str(slides / "a.svs"), "event": "", "time_days": "",
        "follow_up": "",
    }  # fmt: skip


def test_local_sheet_survival_problems_are_reported_by_line(tmp_path):
    sheet, slides = make_local(
        tmp_path,
        ["slide_id,case_id,label,event,time_days",
         "ok,p1,X,1,10", "half,p2,X,1,", "other_half,p3,X,,20", "dead,p4,X,yes,10", "neg,p5,X,0,-4",
         "text,p6,X,0,Not Reported"],
        ["ok.svs", "half.svs", "other_half.svs", "dead.svs", "neg.svs", "text.svs"],
    )  # fmt: skip
    with pytest.raises(PipelineError) as info:
        read_local_sheet(sheet, slides)
    msg = str(info.value)
    assert "has 5 problem(s)" in msg and "'ok'" not in msg
    assert "line 3 (slide 'half'): column 'time_days' is a dependency of 'event': give event and time_days" in msg
    assert "line 4 (slide 'other_half'): column 'event' is a dependency of 'time_days'" in msg
    assert "line 5 (slide 'dead'): column 'event': 'yes' is not one of ['0', '1']" in msg
    assert "line 6 (slide 'neg'): column 'time_days': '-4' does not match" in msg
    assert "line 7 (slide 'text'): column 'time_days': 'Not Reported' does not match" in msg


def test_local_sheet_command_exit_code_and_message(tmp_path, capsys):
    sheet, slides = make_local(tmp_path, ["slide_id,case_id,label", "a,p,X"], [])
    code = cli_main(
        ["local-sheet", "--sheet", str(sheet), "--slides-dir", str(slides), "--out", str(tmp_path / "o.csv")]
    )
    assert code == 1 and "no slide file a.<svs|" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_sheet_schema_is_valid_and_agrees_with_the_checks():
    import jsonschema

    schema = load_sheet_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    assert v.is_valid({"slide_id": "TCGA-05-4244-01Z-00-DX1.abc", "case_id": "TCGA-05-4244", "label": "LUAD"})
    assert v.is_valid({"slide_id": "a", "case_id": "p", "label": "x", "event": "0", "time_days": "0", "follow_up": ""})
    for bad in ({"event": "1"}, {"time_days": "3"}, {"event": "2", "time_days": "3"},
                {"event": "1", "time_days": "1e3"}):  # fmt: skip
        assert not v.is_valid({"slide_id": "a", "case_id": "p", "label": "x", **bad})
    for bad in ({"slide_id": "a/b", "case_id": "p", "label": "x"}, {"slide_id": "a", "case_id": " ", "label": "x"},
                {"slide_id": "a", "label": "x"}):  # fmt: skip
        assert not v.is_valid(bad)
    # every name the GDC sanitiser produces is a valid slide id
    for name in ("../../etc/x.svs", "my slide (1).svs", "-x.svs", "_a.svs"):
        assert v.is_valid({"slide_id": sanitize_filename(name).rpartition(".")[0], "case_id": "p", "label": "x"})


# ---------------------------------------------------------------- config and rules


def test_config_section_validates_and_feeds_the_rules():
    import jsonschema

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    gdc = dict(config["gdc"], token_file="my token.txt", projects=["TCGA-LUAD"], manifest="")
    assert client_args(gdc) == "--api-url https://api.gdc.cancer.gov --retries 5 --token-file 'my token.txt'"
    assert query_args(gdc) == "--task tcga_nsclc --max-slides-per-class 0 --projects TCGA-LUAD"
    bad = dict(config, gdc=dict(config["gdc"], task="tcga_ov"))
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)
    # the download rule's output and the slide every other rule reads: one pattern, layout.GDC_SLIDE
    assert slide_pattern({"slides_dir": "/data/my slides"}) == "/data/my slides/{slide}.svs"
    assert slide_file({"slides_dir": "/data/my slides"}, "TCGA-AA-0001-01Z") == "/data/my slides/TCGA-AA-0001-01Z.svs"


@pytest.mark.workflow
def test_snakemake_query_then_downloads_then_nothing_on_rerun(tmp_path):
    files = nsclc_files()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
            OUT = config["output_dir"]
            include: "{REPO}/workflow/rules/gdc.smk"
            """))
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "gdc_download_all",
        "--cores",
        "2",
        "--configfile",
        "config.yaml",
        "--nocolor",
    ]
    with GdcServer(files) as server:
        config["gdc"] = dict(config["gdc"], api_url=server.url, max_slides_per_class=2, slides_dir="slides",
                             concurrent_downloads=2)  # fmt: skip
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        n_data = len(server.data_requests())
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        assert len(server.data_requests()) == n_data == 4
    ids = cohort_slide_ids(tmp_path / "results" / "gdc" / "cohort.csv")
    by_slide = {f.file_name.removesuffix(".svs"): f for f in files}
    assert len(ids) == 4
    for sid in ids:
        assert (tmp_path / "slides" / f"{sid}.svs").read_bytes() == by_slide[sid].data
        assert (tmp_path / "results" / "logs" / "gdc_download" / f"{sid}.log").is_file()
    assert "Nothing to be done" in second.stdout + second.stderr
