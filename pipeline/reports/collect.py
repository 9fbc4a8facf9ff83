"""The reports stage: one plain-text report per case in a texts folder, and an index of every case.

Sources: the open "Pathology Report" PDFs of the GDC (found per case, downloaded and md5-verified, text from the
PDF's text layer; a PDF folder keeps them so a rerun downloads nothing already right), a user's CSV `case_id,text`
(e.g. a published OCR of the TCGA reports), or the demo's synthetic reports (a CSV of the same shape). Each case
gets `{case}.txt` in the texts folder and a row in the index table: `ok`, `none` (no report in the source) or `failed` with the reason
(a PDF without a text layer, a download that failed, an empty text); one bad case never stops the others.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_text_atomic
from pipeline.status import name_problem

log = logging.getLogger(__name__)

SOURCES = ("demo", "csv", "gdc")
INDEX_COLUMNS = ["case_id", "status", "source", "chars", "reason", "text_file"]
STATUSES = ("ok", "none", "failed")


@dataclass(frozen=True)
class IndexRow:
    case_id: str
    status: str  # ok | none | failed
    source: str
    chars: int = 0
    reason: str = ""
    text_file: str = ""


def read_report_table(path: PathLike) -> dict[str, str]:
    """case_id -> text of a `case_id,text` CSV; a case listed twice is refused (which text would be the report?)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"reports table {path}: no such file (reports.csv)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    if list(table.columns) != ["case_id", "text"]:
        raise PipelineError(f"reports table {path}: columns must be case_id,text; has {list(table.columns)}")
    table["case_id"] = table["case_id"].str.strip()
    dup = sorted(set(table["case_id"][table["case_id"].duplicated()]))
    if dup:
        raise PipelineError(f"reports table {path}: case(s) listed more than once: {dup[:10]}")
    return dict(zip(table["case_id"], table["text"]))


def cohort_cases(sheet_csv: PathLike) -> list[str]:
    """The distinct case ids of a cohort sheet, in sheet order."""
    from pipeline.dataset import read_sheet

    cases = read_sheet(sheet_csv)["case_id"]
    return list(dict.fromkeys(c for c in cases if c))


def _store(texts_dir: Path, case: str, text: str, source: str) -> IndexRow:
    """Write `{case}.txt` in `texts_dir` (unchanged bytes are not rewritten) and its index row."""
    text = text.strip()
    if not text:
        return IndexRow(case, "failed", source, 0, "the report text is empty")
    path = texts_dir / f"{case}.txt"
    if not path.is_file() or path.read_text(encoding="utf-8") != text + "\n":
        write_text_atomic(path, text + "\n")
    return IndexRow(case, "ok", source, len(text), "", str(path))


def from_table(cases: Iterable[str], table: dict[str, str], texts_dir: Path, source: str, where: str) -> list[IndexRow]:
    rows = []
    for case in cases:
        if case not in table:
            rows.append(IndexRow(case, "none", source, 0, f"not in {where}"))
        else:
            rows.append(_store(texts_dir, case, table[case], source))
    return rows


def from_gdc(cases: Iterable[str], client, texts_dir: Path, pdf_dir: Path) -> list[IndexRow]:
    """Each case's report PDFs (several are joined, in file-id order) downloaded into `pdf_dir` and read; failures
    per case."""
    from pipeline.gdc.reports import download_report, find_reports
    from pipeline.reports.pdf import ReportError, pdf_text

    cases = list(cases)
    found = find_reports(client, cases)
    log.info("GDC: %d of %d cases have a pathology report PDF", len(found), len(cases))
    rows = []
    for case in cases:
        entries = found.get(case)
        if not entries:
            rows.append(IndexRow(case, "none", "gdc", 0, "no open-access Pathology Report PDF on the GDC"))
            continue
        try:
            texts = [pdf_text(download_report(client, e, pdf_dir)) for e in entries]
        except (ReportError, PipelineError) as err:
            rows.append(IndexRow(case, "failed", "gdc", 0, str(err)))
            log.warning("case %s: %s", case, err)
            continue
        rows.append(_store(texts_dir, case, "\n\n".join(texts), "gdc"))
    return rows


def write_index(path: PathLike, rows: list[IndexRow]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for r in rows:
        writer.writerow([r.case_id, r.status, r.source, r.chars, r.reason, r.text_file])
    write_text_atomic(path, buf.getvalue())


def read_index(path: PathLike) -> list[IndexRow]:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"reports index {path}: no such file (run the reports stage)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns) != INDEX_COLUMNS:
        raise PipelineError(f"reports index {path}: columns must be {INDEX_COLUMNS}; has {list(table.columns)}")
    return [IndexRow(r.case_id, r.status, r.source, int(r.chars or 0), r.reason, r.text_file)
            for r in table.itertuples(index=False)]


def collect_reports(
    *, cases: Iterable[str], source: str, texts_dir: PathLike, index: PathLike, pdf_dir: PathLike | None = None,
    table: PathLike | None = None, client=None,
) -> list[IndexRow]:
    """The stage: every case's report text in `texts_dir` (created even when no case has one) and the `index`
    table; the GDC source downloads into `pdf_dir`, a cache (see the module docstring)."""
    if source not in SOURCES:
        raise PipelineError(f"reports source {source!r}; choose one of {list(SOURCES)}")
    texts = Path(texts_dir)
    texts.mkdir(parents=True, exist_ok=True)
    cases = list(dict.fromkeys(cases))
    bad = {c: name_problem(c) for c in cases if name_problem(c)}
    good = [c for c in cases if c not in bad]
    if source == "gdc":
        if client is None or not pdf_dir:
            raise PipelineError("reports source gdc needs a GDC client and a folder for the PDFs")
        rows = from_gdc(good, client, texts, Path(pdf_dir))
    else:
        if not table:
            raise PipelineError(f"reports source {source} needs a table case_id,text")
        rows = from_table(good, read_report_table(table), texts, source, str(table))
    rows += [IndexRow(c, "failed", source, 0, f"case id cannot name a file: {why}") for c, why in bad.items()]
    rows.sort(key=lambda r: r.case_id)
    write_index(index, rows)
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    log.info("reports (%s): %d cases, %d with a report, %d without, %d failed", source, len(rows), counts["ok"],
             counts["none"], counts["failed"])
    for r in rows:
        if r.status == "failed":
            log.warning("case %s: %s", r.case_id, r.reason)
    return rows
