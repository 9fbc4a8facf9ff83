"""The local source: a folder of slides plus the user's sheet (slide_id, case_id, label[, file, survival]), checked.

Every row is validated against `workflow/schemas/sheet.schema.yaml` (the same schema the workflow uses), then the
table as a whole: duplicate slides, a file used twice, labels outside the task's classes, files that are not
there. All problems are reported at once, each naming the line and the slide, because fixing a sheet one error
per run is slow. The normalized sheet (`slide_id,case_id,label,file,event,time_days,follow_up`, sorted by slide) is
what later stages read. The survival columns are optional in the user's sheet: `event` (0/1) and `time_days` (>= 0)
come together or not at all, and `follow_up` is a free note (the GDC source writes there why a case has no label);
the normalized sheet always has them, blank when unknown.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_text_atomic
from pipeline.gdc.clinical import Survival, format_days
from pipeline.wiring.layout import GDC_SLIDE

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "sheet.schema.yaml"
SHEET_COLUMNS = ("slide_id", "case_id", "label", "file", "event", "time_days", "follow_up")
#: Extensions tried, in this order, when a row has no `file`: what openslide reads.
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
_MAX_SHOWN = 30


@dataclass(frozen=True)
class SheetRow:
    slide_id: str
    case_id: str
    label: str
    file: Path
    survival: Survival | None = None  # None: no (usable) survival label
    follow_up: str = ""  # the sheet's note on the follow-up

    def survival_cells(self) -> list[str]:
        """The normalized sheet's event, time_days and follow_up cells (blank when unknown)."""
        if self.survival is None:
            return ["", "", self.follow_up]
        return [str(self.survival.event), format_days(self.survival.time_days), self.follow_up]


def load_sheet_schema(path: PathLike = SCHEMA_PATH) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"sheet schema {path} is missing; run from a checkout of hive-wsi (pip install -e .)")
    return yaml.safe_load(path.read_text())


def read_local_sheet(
    sheet: PathLike,
    slides_dir: PathLike,
    labels: Iterable[str] | None = None,
    schema: dict[str, Any] | None = None,
    allow_missing: bool = False,
) -> list[SheetRow]:
    """Validated rows of a user sheet, files resolved against `slides_dir`; PipelineError lists every problem.

    With `allow_missing` (the GDC source, whose slides arrive by their own download jobs), a row whose file is not
    there yet is kept with its expected path (`file`, else layout.GDC_SLIDE in `slides_dir`); its download's status
    says why it is absent.
    """
    sheet, slides_dir = Path(sheet), Path(slides_dir)
    if not sheet.is_file():
        raise PipelineError(f"sheet {sheet} does not exist (local.sheet)")
    if not slides_dir.is_dir() and not allow_missing:
        raise PipelineError(f"slides folder {slides_dir} does not exist (local.slides_dir)")
    allowed = list(dict.fromkeys(labels)) if labels else None
    validator = jsonschema.Draft202012Validator(schema or load_sheet_schema())

    with open(sheet, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in ("slide_id", "case_id", "label") if c not in header]
        if missing:
            raise PipelineError(
                f"sheet {sheet}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'no header'}; "
                "expected slide_id,case_id,label[,file][,event,time_days][,follow_up]"
            )
        raw_rows = [
            (lineno, {k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
            for lineno, row in enumerate(reader, start=2)
        ]
    extra = [c for c in header if c not in SHEET_COLUMNS]
    if extra:
        log.info("sheet %s: ignoring column(s) %s", sheet, ", ".join(extra))

    problems: list[str] = []
    rows: list[SheetRow] = []
    first_line: dict[str, int] = {}
    file_owner: dict[Path, str] = {}
    for lineno, raw in raw_rows:
        if not any(raw.values()):
            continue
        record = {k: raw[k] for k in SHEET_COLUMNS if raw.get(k)}
        where = f"line {lineno}" + (f" (slide '{raw.get('slide_id')}')" if raw.get("slide_id") else "")
        errors = sorted(validator.iter_errors(record), key=lambda e: list(e.path))
        if errors:
            problems.extend(f"{where}: {_describe(e, validator.schema)}" for e in errors)
            continue
        slide_id = record["slide_id"]
        if slide_id in first_line:
            problems.append(f"{where}: duplicate slide id, already on line {first_line[slide_id]}")
            continue
        first_line[slide_id] = lineno
        label = record["label"]
        if allowed is not None and label not in allowed:
            same_case = [a for a in allowed if a.lower() == label.lower()]
            close = same_case or difflib.get_close_matches(label, allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"{where}: unknown label '{label}', expected one of {', '.join(allowed)}{hint}")
            continue
        path, why = _resolve_file(slides_dir, slide_id, record.get("file"))
        if path is None and allow_missing and "several files" not in why:
            given = record.get("file")
            path = (Path(given) if Path(given).is_absolute() else slides_dir / given) if given else None
            path = path or slides_dir / GDC_SLIDE.format(slide=slide_id)
            log.info("sheet %s: slide '%s' has no file at %s yet", sheet, slide_id, path)
        if path is None:
            problems.append(f"{where}: {why}")
            continue
        owner = file_owner.setdefault(path.resolve(), slide_id)
        if owner != slide_id:
            problems.append(f"{where}: file {path} is already used by slide '{owner}'")
            continue
        survival = Survival(int(record["event"]), float(record["time_days"])) if "event" in record else None
        rows.append(SheetRow(slide_id, record["case_id"], label, path, survival, record.get("follow_up", "")))

    if problems:
        shown = problems[:_MAX_SHOWN] + (
            [f"... and {len(problems) - _MAX_SHOWN} more"] if len(problems) > _MAX_SHOWN else []
        )
        raise PipelineError(f"sheet {sheet} has {len(problems)} problem(s):\n  " + "\n  ".join(shown))
    if not rows:
        raise PipelineError(f"sheet {sheet} lists no slides")
    if slides_dir.is_dir():
        _log_unlisted(slides_dir, rows)
    return sorted(rows, key=lambda r: r.slide_id)


def _describe(err: jsonschema.ValidationError, schema: dict[str, Any]) -> str:
    """A schema error as `column 'x': what is wrong (what the column must be)`."""
    if err.validator == "required":
        return err.message.replace("property", "column")
    if err.validator == "dependentRequired":
        return f"column {err.message}: give event and time_days together, or leave both blank"
    column = str(err.path[0]) if err.path else "?"
    description = schema.get("properties", {}).get(column, {}).get("description", "")
    return f"column '{column}': {err.message}" + (f" ({description})" if description else "")


def _resolve_file(slides_dir: Path, slide_id: str, file: str | None) -> tuple[Path | None, str]:
    """The slide's file: `file` (relative to slides_dir unless absolute), else the one `slide_id.<ext>`."""
    if file:
        path = Path(file) if Path(file).is_absolute() else slides_dir / file
        return (path, "") if path.is_file() else (None, f"file {path} does not exist")
    found = [slides_dir / f"{slide_id}{ext}" for ext in SLIDE_EXTENSIONS if (slides_dir / f"{slide_id}{ext}").is_file()]
    if len(found) == 1:
        return found[0], ""
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        return None, f"several files match ({names}); name the one to use in a 'file' column"
    return None, f"no slide file {slide_id}.<{'|'.join(e.lstrip('.') for e in SLIDE_EXTENSIONS)}> in {slides_dir}"


def _log_unlisted(slides_dir: Path, rows: list[SheetRow]) -> None:
    used = {r.file.resolve() for r in rows}
    unlisted = sorted(
        p.name for p in slides_dir.iterdir() if p.suffix.lower() in SLIDE_EXTENSIONS and p.resolve() not in used
    )
    if unlisted:
        log.warning("%d slide file(s) in %s are not in the sheet, e.g. %s", len(unlisted), slides_dir, unlisted[0])


def cohort_sheet_csv(rows: list[SheetRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SHEET_COLUMNS)
    for r in sorted(rows, key=lambda r: r.slide_id):
        writer.writerow([r.slide_id, r.case_id, r.label, str(r.file), *r.survival_cells()])
    return buf.getvalue()


def normalize_local_sheet(
    sheet: PathLike, slides_dir: PathLike, out: PathLike, labels: Iterable[str] | None = None,
    allow_missing: bool = False,
) -> list[SheetRow]:
    """Validate the user's sheet and write the normalized cohort sheet to `out` (atomically)."""
    rows = read_local_sheet(sheet, slides_dir, labels, allow_missing=allow_missing)
    write_text_atomic(out, cohort_sheet_csv(rows))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    log.info(
        "sheet %s: %d slides, %d cases; %s",
        sheet, len(rows), len({r.case_id for r in rows}), ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
    )  # fmt: skip
    return rows
