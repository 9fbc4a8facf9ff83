"""The gdc-client manifest (`id filename md5 size state`, tab-separated) and safe file names.

The manifest is the contract between the query and the per-slide downloads, and it is the format a user gets
from the GDC portal, so a hand-made one can replace the query. File names come from a remote service and become
paths on our disk, so they are sanitised here, in one place, before anything else sees them.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_text_atomic

MANIFEST_COLUMNS = ("id", "filename", "md5", "size", "state")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 200


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a manifest; `filename` is already sanitised."""

    id: str
    filename: str
    md5: str
    size: int
    state: str = "released"

    @property
    def slide_id(self) -> str:
        return slide_id_of(self.filename)


def sanitize_filename(name: str, fallback: str = "") -> str:
    """A bare file name that cannot leave its folder and is safe as a slide id, wildcard and shell word.

    Path separators split the name and `.`/`..` parts are dropped (`../../etc/x` becomes `etc_x`); characters
    other than letters, digits, `.`, `_` and `-` become `_`; leading dots, underscores and dashes go. An empty
    result falls back to `fallback` (the file id), so a file always has a name. TCGA slide names pass unchanged.
    """
    parts = [p for p in re.split(r"[/\\]+", name) if p not in ("", ".", "..")]
    cleaned = _UNSAFE_CHARS.sub("_", "_".join(parts)).lstrip("._-")
    cleaned = cleaned.replace("..", "_")
    if len(cleaned) > _MAX_NAME:
        stem, dot, ext = cleaned.rpartition(".")
        cleaned = stem[: _MAX_NAME - len(ext) - 1] + dot + ext if dot and len(ext) <= 10 else cleaned[:_MAX_NAME]
    if not cleaned:
        if not fallback:
            raise PipelineError(f"file name {name!r} has nothing usable left after sanitising")
        return sanitize_filename(fallback)
    return cleaned


def slide_id_of(filename: str) -> str:
    """The slide id is the file name without its last extension (TCGA names keep their `.uuid` part)."""
    stem, dot, _ = filename.rpartition(".")
    return stem if dot and stem else filename


def check_file_id(file_id: str, where: str = "") -> str:
    """GDC file ids are UUIDs; anything else would be spliced into a URL path, so refuse it."""
    if not _UUID.match(file_id):
        raise PipelineError(f"{where}file id {file_id!r} is not a GDC UUID")
    return file_id.lower()


def write_manifest(dest: PathLike, entries: list[ManifestEntry]) -> None:
    """Write a gdc-client manifest, rows sorted by file name then id so reruns give identical bytes."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for e in sorted(entries, key=lambda e: (e.filename, e.id)):
        writer.writerow([e.id, e.filename, e.md5, e.size, e.state])
    write_text_atomic(dest, buf.getvalue())


def read_manifest(path: PathLike) -> list[ManifestEntry]:
    """Read a gdc-client manifest (ours or one from the GDC portal), validating every row.

    Extra columns (the portal adds none today, older exports added `acl`) are ignored; names are sanitised.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"manifest {path} does not exist")
    rows = list(csv.reader(path.read_text().splitlines(), delimiter="\t"))
    if not rows:
        raise PipelineError(f"manifest {path} is empty")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in MANIFEST_COLUMNS if c not in header and c != "state"]
    if missing:
        raise PipelineError(
            f"manifest {path}: missing column(s) {', '.join(missing)}; a gdc-client manifest has the tab-separated "
            f"header {' '.join(MANIFEST_COLUMNS)}"
        )
    col = {name: header.index(name) for name in MANIFEST_COLUMNS if name in header}
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"manifest {path} line {lineno}: "
        if len(row) < len(header):
            raise PipelineError(f"{where}expected {len(header)} tab-separated fields, found {len(row)}")
        file_id = check_file_id(row[col["id"]].strip(), where)
        md5 = row[col["md5"]].strip().lower()
        if not _MD5.match(md5):
            raise PipelineError(f"{where}md5 {md5!r} is not 32 hex digits")
        try:
            size = int(row[col["size"]].strip())
        except ValueError:
            raise PipelineError(f"{where}size {row[col['size']]!r} is not an integer") from None
        if size < 0:
            raise PipelineError(f"{where}size {size} is negative")
        if file_id in seen:
            raise PipelineError(f"{where}file id {file_id} already listed on line {seen[file_id]}")
        seen[file_id] = lineno
        state = row[col["state"]].strip() if "state" in col else "released"
        name = sanitize_filename(row[col["filename"]].strip(), fallback=file_id)
        entries.append(ManifestEntry(file_id, name, md5, size, state or "released"))
    if not entries:
        raise PipelineError(f"manifest {path} lists no files")
    check_unique_slides(entries, str(path))
    return entries


def check_unique_slides(entries: list[ManifestEntry], where: str) -> None:
    """Two files whose names reduce to the same slide id would overwrite each other: refuse them by name."""
    by_slide: dict[str, str] = {}
    for e in entries:
        other = by_slide.setdefault(e.slide_id, e.id)
        if other != e.id:
            raise PipelineError(f"{where}: files {other} and {e.id} both give slide id '{e.slide_id}'")


def find_entry(entries: list[ManifestEntry], slide_id: str, where: str) -> ManifestEntry:
    """The manifest row whose file name gives `slide_id`, or an error naming the slide and the manifest."""
    for e in entries:
        if e.slide_id == slide_id:
            return e
    raise PipelineError(f"slide '{slide_id}' is not listed in {where}")
