"""A report's text from a PDF's text layer (pypdf). Scanned reports have none: that is an error saying so, never an
empty text that would make every answer "Unknown" without anyone noticing."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.formats import PathLike


class ReportError(PipelineError):
    """A case's report cannot be read; the message names the file and the reason."""


class NoTextLayer(ReportError):
    """The PDF holds pages but no extractable text (a scan): it needs OCR, or the text from a reports CSV."""


def pdf_text(path: PathLike) -> str:
    """The text of every page, pages separated by a blank line; NoTextLayer when no page has any."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    path = Path(path)
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its per-object warnings are noise in a job's log
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ReportError(f"{path}: the PDF is encrypted with a password")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, PyPdfError, ValueError, KeyError, OSError) as err:
        raise ReportError(f"{path}: not a readable PDF ({type(err).__name__}: {err})") from err
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text.strip():
        raise NoTextLayer(
            f"{path}: {len(pages)} page(s) but no text layer (a scanned report?); OCR it, or give the report "
            "texts in a reports CSV (reports.source: csv)"
        )
    return text
