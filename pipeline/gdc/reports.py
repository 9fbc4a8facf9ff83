"""The open-access "Pathology Report" PDFs of a cohort's cases: found by one `/files` search per batch of cases,
downloaded by the verified downloader (resumable, md5-checked, kept when already right)."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from pipeline.errors import PipelineError
from pipeline.gdc.client import GdcClient
from pipeline.gdc.download import download_file
from pipeline.gdc.manifest import ManifestEntry, check_file_id, sanitize_filename
from pipeline.gdc.query import fetch_hits, in_filter

log = logging.getLogger(__name__)

#: what a TCGA pathology report is on the GDC (data category "Clinical")
REPORT_DATA_TYPE = "Pathology Report"
REPORT_DATA_FORMAT = "PDF"
REPORT_FIELDS = ("file_id", "file_name", "md5sum", "file_size", "state", "cases.submitter_id")
CASE_BATCH = 500


def report_filters(cases: Iterable[str], access: Iterable[str] = ("open",)) -> dict:
    """Pathology report PDFs of these cases (TCGA patient barcodes)."""
    return {
        "op": "and",
        "content": [
            in_filter("cases.submitter_id", sorted(set(cases))),
            in_filter("files.data_type", [REPORT_DATA_TYPE]),
            in_filter("files.data_format", [REPORT_DATA_FORMAT]),
            in_filter("files.access", sorted(access)),
        ],
    }


def find_reports(client: GdcClient, cases: Iterable[str]) -> dict[str, list[ManifestEntry]]:
    """case -> its report files (sorted by file id); cases without any are absent."""
    wanted = sorted(set(cases))
    found: dict[str, list[ManifestEntry]] = defaultdict(list)
    for start in range(0, len(wanted), CASE_BATCH):
        batch = wanted[start : start + CASE_BATCH]
        for hit in fetch_hits(client, report_filters(batch), fields=REPORT_FIELDS):
            try:
                file_id = check_file_id(str(hit.get("file_id") or hit.get("id") or ""))
                entry = ManifestEntry(file_id, sanitize_filename(str(hit.get("file_name") or ""), fallback=file_id),
                                      str(hit["md5sum"]).lower(), int(hit["file_size"]), str(hit.get("state") or ""))
            except (KeyError, TypeError, ValueError, PipelineError) as err:
                log.warning("GDC report file %s left out: incomplete metadata (%s)", hit.get("file_id"), err)
                continue
            for case in {str(c.get("submitter_id") or "") for c in hit.get("cases") or []} & set(batch):
                found[case].append(entry)
    return {case: sorted(entries, key=lambda e: e.id) for case, entries in sorted(found.items())}


def download_report(client: GdcClient, entry: ManifestEntry, pdf_dir: Path) -> Path:
    """The verified PDF at `pdf_dir/{file_id}.pdf` (not fetched again when its md5 is right)."""
    return download_file(client, entry.id, dest=pdf_dir / f"{entry.id}.pdf", size=entry.size, md5=entry.md5,
                         progress=False).path
