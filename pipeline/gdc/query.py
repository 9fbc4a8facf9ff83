"""From a task preset (or a user's gdc-client manifest) to `manifest.tsv` and a labelled cohort sheet.

The query asks `POST /files` for the diagnostic SVS slides of the preset's projects, page by page until
`pagination.total`, sorted explicitly so the same GDC release gives the same manifest. Each file is labelled by
its preset; files without a label are left out and counted by reason. A user's own manifest replaces the search:
its files are then looked up by id only to read their case, project, diagnosis and clinical fields. Each slide also
carries its case's survival label (event, time_days) or the reason it has none (pipeline.gdc.clinical); a slide is
never left out for that, since classification tasks use it all the same.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_json_atomic, write_text_atomic
from pipeline.gdc.client import GdcClient
from pipeline.gdc.clinical import CASE_FIELDS, Survival, format_days, survival_of
from pipeline.gdc.manifest import (
    ManifestEntry,
    check_file_id,
    check_unique_slides,
    read_manifest,
    sanitize_filename,
    write_manifest,
)
from pipeline.gdc.presets import TaskPreset

log = logging.getLogger(__name__)

FIELDS = (
    "file_id",
    "file_name",
    "md5sum",
    "file_size",
    "state",
    "cases.submitter_id",
    "cases.case_id",
    "cases.project.project_id",
    "cases.diagnoses.primary_diagnosis",
    *(f"cases.{name}" for name in CASE_FIELDS),
)
#: event/time_days are blank when the case has no usable follow-up; follow_up then says why (blank otherwise)
COHORT_COLUMNS = (
    "file_id", "slide_id", "case_id", "project", "primary_diagnosis", "label", "event", "time_days", "follow_up",
)  # fmt: skip
SORT = "file_id:asc"
ID_BATCH = 500  # ids per lookup request when a user manifest is given
TCGA_PATIENT_LEN = 12  # TCGA-XX-XXXX


@dataclass(frozen=True)
class SlideRecord:
    """One slide file with what the labelling needs."""

    entry: ManifestEntry
    case_id: str  # TCGA patient barcode
    project: str
    diagnoses: tuple[str, ...]
    survival: Survival | str  # the case's survival label, or why it has none

    @property
    def primary_diagnosis(self) -> str:
        return " / ".join(sorted(set(d for d in self.diagnoses if d)))

    def survival_cells(self) -> list[str]:
        """The cohort sheet's event, time_days and follow_up cells."""
        if isinstance(self.survival, Survival):
            return [str(self.survival.event), format_days(self.survival.time_days), ""]
        return ["", "", self.survival]


@dataclass
class QueryResult:
    selected: list[tuple[SlideRecord, str]]  # (record, label), in cohort-sheet order
    excluded: Counter = field(default_factory=Counter)  # reason -> number of files
    capped: Counter = field(default_factory=Counter)  # label -> files left out by max_slides_per_class
    found: int = 0

    def per_class(self) -> dict[str, int]:
        return dict(sorted(Counter(label for _, label in self.selected).items()))


def in_filter(field_name: str, values: Iterable[str]) -> dict[str, Any]:
    return {"op": "in", "content": {"field": field_name, "value": list(values)}}


def build_filters(
    projects: Iterable[str],
    access: Iterable[str] = ("open",),
    data_format: str = "SVS",
    data_type: str = "Slide Image",
    experimental_strategy: str = "Diagnostic Slide",
) -> dict[str, Any]:
    """The GDC filter for FFPE diagnostic slides ("Tissue Slide" would be frozen sections) of some projects."""
    return {
        "op": "and",
        "content": [
            in_filter("cases.project.project_id", sorted(projects)),
            in_filter("files.data_format", [data_format]),
            in_filter("files.data_type", [data_type]),
            in_filter("files.experimental_strategy", [experimental_strategy]),
            in_filter("files.access", sorted(access)),
        ],
    }


def fetch_hits(
    client: GdcClient, filters: dict[str, Any], page_size: int = 500, fields: Iterable[str] = FIELDS
) -> list[dict[str, Any]]:
    """Every hit of a `/files` search (the slide fields unless told): pages of `page_size` until
    `pagination.total`, de-duplicated by id."""
    if page_size < 1:
        raise PipelineError(f"page size must be positive, got {page_size}")
    hits: dict[str, dict[str, Any]] = {}
    start, total = 0, None
    while total is None or start < total:
        payload = {
            "filters": filters,
            "fields": ",".join(fields),
            "format": "JSON",
            "size": page_size,
            "from": start,
            "sort": SORT,
        }
        answer = client.post_json("/files", payload)
        for warning in (answer.get("warnings") or {}).items():
            log.warning("GDC warning: %s: %s", *warning)
        try:
            page = answer["data"]["hits"]
            total = int(answer["data"]["pagination"]["total"])
        except (KeyError, TypeError, ValueError):
            raise PipelineError(
                f"GDC answer to /files (from={start}) has no data.hits / data.pagination.total"
            ) from None
        if not page and start < total:
            raise PipelineError(f"GDC returned an empty page at from={start} although pagination.total={total}")
        for hit in page:
            hits.setdefault(str(hit.get("file_id") or hit.get("id")), hit)
        start += len(page)
        log.info("GDC /files: %d of %d files", min(start, total), total)
    return [hits[k] for k in sorted(hits)]


def record_of(hit: dict[str, Any]) -> SlideRecord | str:
    """A SlideRecord from one `/files` hit, or the reason it cannot be one."""
    file_id = str(hit.get("file_id") or hit.get("id") or "")
    try:
        file_id = check_file_id(file_id)
        md5 = str(hit["md5sum"]).lower()
        size = int(hit["file_size"])
        name = sanitize_filename(str(hit.get("file_name") or ""), fallback=file_id)
    except (KeyError, TypeError, ValueError, PipelineError):
        return "incomplete file metadata"
    cases = hit.get("cases") or []
    if len(cases) != 1:
        return f"linked to {len(cases)} cases"
    case = cases[0]
    barcode = str(case.get("submitter_id") or "")
    if not barcode:
        return "case without submitter_id"
    project = str((case.get("project") or {}).get("project_id") or "")
    diagnoses = tuple(str(d.get("primary_diagnosis") or "") for d in case.get("diagnoses") or [])
    entry = ManifestEntry(file_id, name, md5, size, str(hit.get("state") or "released"))
    return SlideRecord(entry, barcode[:TCGA_PATIENT_LEN], project, diagnoses, survival_of(case))


def label_records(records: list[SlideRecord | str], preset: TaskPreset, max_per_class: int = 0) -> QueryResult:
    """Label, then keep at most `max_per_class` slides per class (first by slide id: deterministic, 0 = all)."""
    result = QueryResult(selected=[], found=len(records))
    labelled: list[tuple[SlideRecord, str]] = []
    for rec in records:
        if isinstance(rec, str):
            result.excluded[rec] += 1
            continue
        verdict = preset.label(rec.project, list(rec.diagnoses))
        if verdict.label is None:
            result.excluded[verdict.reason] += 1
        else:
            labelled.append((rec, verdict.label))
    labelled.sort(key=lambda item: (preset.classes.index(item[1]), item[0].entry.slide_id))
    taken: Counter = Counter()
    for rec, label in labelled:
        if max_per_class and taken[label] >= max_per_class:
            result.capped[label] += 1
            continue
        taken[label] += 1
        result.selected.append((rec, label))
    check_unique_slides([rec.entry for rec, _ in result.selected], "GDC query")
    return result


def lookup_manifest(client: GdcClient, entries: list[ManifestEntry]) -> list[SlideRecord | str]:
    """Case, project and diagnosis of each file of a user manifest; the manifest's name, md5 and size stand."""
    fields_hits: dict[str, dict[str, Any]] = {}
    ids = [e.id for e in entries]
    for i in range(0, len(ids), ID_BATCH):
        batch = ids[i : i + ID_BATCH]
        for hit in fetch_hits(client, {"op": "and", "content": [in_filter("files.file_id", batch)]}, ID_BATCH):
            fields_hits[str(hit.get("file_id") or hit.get("id")).lower()] = hit
    unknown = [e.id for e in entries if e.id not in fields_hits]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise PipelineError(f"{len(unknown)} file id(s) of the manifest are unknown to {client.api_url}: {shown}")
    records: list[SlideRecord | str] = []
    for e in entries:
        rec = record_of(fields_hits[e.id])
        if isinstance(rec, SlideRecord):
            if rec.entry.md5 != e.md5 or rec.entry.size != e.size:
                raise PipelineError(
                    f"manifest lists file {e.id} ({e.filename}) with md5 {e.md5} and size {e.size}, but the GDC "
                    f"holds md5 {rec.entry.md5} and size {rec.entry.size}; the manifest is stale"
                )
            rec = replace(rec, entry=e)
        records.append(rec)
    return records


def cohort_csv(selected: list[tuple[SlideRecord, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COHORT_COLUMNS)
    for rec, label in selected:
        writer.writerow(
            [rec.entry.id, rec.entry.slide_id, rec.case_id, rec.project, rec.primary_diagnosis, label]
            + rec.survival_cells()
        )
    return buf.getvalue()


def survival_counts(selected: list[tuple[SlideRecord, str]]) -> tuple[int, Counter]:
    """Cases of the selected slides with a usable survival label, and the others counted by reason (per case,
    since the label is per patient; the first slide of a case speaks for it)."""
    by_case: dict[str, Survival | str] = {}
    for rec, _ in selected:
        by_case.setdefault(rec.case_id, rec.survival)
    unusable = Counter(s for s in by_case.values() if isinstance(s, str))
    return len(by_case) - sum(unusable.values()), unusable


def run_query(
    client: GdcClient,
    preset: TaskPreset,
    out_manifest: PathLike,
    out_cohort: PathLike,
    out_summary: PathLike | None = None,
    max_per_class: int = 0,
    user_manifest: PathLike | None = None,
    page_size: int = 500,
    access: Iterable[str] = ("open",),
) -> QueryResult:
    """Query (or read the user's manifest), label, cap, and write manifest, cohort sheet and a summary."""
    if max_per_class < 0:
        raise PipelineError(f"max_slides_per_class must be 0 (all) or positive, got {max_per_class}")
    filters: dict[str, Any] | None = None
    if user_manifest:
        entries = read_manifest(user_manifest)
        log.info("manifest %s: %d files; looking up their cases", user_manifest, len(entries))
        records = lookup_manifest(client, entries)
    else:
        filters = build_filters(preset.projects, access=access)
        log.info("querying %s for task %s (%s)", client.api_url, preset.name, ", ".join(preset.projects))
        records = [record_of(hit) for hit in fetch_hits(client, filters, page_size)]
    result = label_records(records, preset, max_per_class)
    if not result.selected:
        raise PipelineError(
            f"no slide of task {preset.name} left: {result.found} files found, left out: "
            + (", ".join(f"{n} x {r}" for r, n in result.excluded.most_common()) or "none")
        )
    _log_counts(preset, result)
    with_follow_up, unusable = survival_counts(result.selected)
    log.info("survival: %d case(s) with usable follow-up, %d without", with_follow_up, sum(unusable.values()))
    for reason, n in unusable.most_common():
        log.info("no survival label for %d case(s): %s", n, reason)
    write_manifest(out_manifest, [rec.entry for rec, _ in result.selected])
    write_text_atomic(out_cohort, cohort_csv(result.selected))
    if out_summary:
        write_json_atomic(
            out_summary,
            {
                "task": preset.name,
                "classes": list(preset.classes),
                "projects": list(preset.projects),
                "api_url": client.api_url,
                "source": str(user_manifest) if user_manifest else "query",
                "filters": filters,
                "files_found": result.found,
                "per_class": result.per_class(),
                "left_out": dict(sorted(result.excluded.items())),
                "capped_by_max_slides_per_class": dict(sorted(result.capped.items())),
                "total_bytes": sum(rec.entry.size for rec, _ in result.selected),
                "cases": with_follow_up + sum(unusable.values()),
                "cases_with_follow_up": with_follow_up,
                "survival_unusable": dict(sorted(unusable.items())),
            },
        )
    return result


def _log_counts(preset: TaskPreset, result: QueryResult) -> None:
    per_class = result.per_class()
    for cls in preset.classes:
        n = per_class.get(cls, 0)
        extra = f" ({result.capped[cls]} more left out by max_slides_per_class)" if result.capped[cls] else ""
        (log.warning if n == 0 else log.info)("class %s: %d slides%s", cls, n, extra)
    for reason, n in result.excluded.most_common():
        log.info("left out %d file(s): %s", n, reason)
