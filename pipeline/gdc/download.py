"""Download one GDC file: resumable, retried, verified while streaming, renamed into place only when right.

Bytes go to `<dest>.partial` and into an md5 as they arrive. After a dropped connection the next request asks
`Range: bytes=<bytes on disk>-` and appends (a server that answers 200 instead restarts the file). When the byte
count and md5 match the manifest, the partial file is renamed onto the final name; on a permanent mismatch it is
deleted, so a file at the final path is always a verified one. A file already there with the right md5 is kept
without any request, so reruns download nothing new.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.formats import PathLike
from pipeline.gdc.client import NETWORK_ERRORS, GdcClient, RangeNotSatisfiable, TransientError
from pipeline.gdc.manifest import check_file_id, find_entry, read_manifest, sanitize_filename

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    md5: str
    fetched: int  # bytes received in this call (0 when the file was already present)
    requests: int  # HTTP requests made for the file (0 when already present)

    @property
    def skipped(self) -> bool:
        return self.requests == 0


def file_md5(path: PathLike, chunk_size: int = CHUNK) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def filename_from_disposition(value: str | None) -> str | None:
    """The (unsanitised) `filename` of a Content-Disposition header, RFC 2231 forms included."""
    if not value:
        return None
    msg = Message()
    msg["content-disposition"] = value
    return msg.get_filename()


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        raise TransientError(f"206 answer with unusable Content-Range {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


class _Partial:
    """The `.partial` file, its byte count and the md5 of its bytes so far."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.hasher = hashlib.md5()

    def resume(self, expected_size: int | None) -> None:
        """Pick up bytes left by an earlier run (hashing them once), unless there are more than expected."""
        if not self.path.is_file():
            return
        found = self.path.stat().st_size
        if expected_size is not None and found > expected_size:
            log.warning("%s holds %d bytes, more than the expected %d; starting over", self.path, found, expected_size)
            self.reset()
            return
        with open(self.path, "rb") as f:
            while block := f.read(CHUNK):
                self.hasher.update(block)
        self.offset = found
        if found:
            log.info("resuming %s from byte %d", self.path.name, found)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.offset = 0
        self.hasher = hashlib.md5()

    def append(self, f: BinaryIO, block: bytes) -> None:
        f.write(block)
        self.hasher.update(block)
        self.offset += len(block)


class _Fetch:
    """One file's transfer across attempts; counts requests and bytes for the result."""

    def __init__(self, client: GdcClient, file_id: str, state: _Partial, size: int | None, what: str, bar: tqdm):
        self.client, self.file_id, self.state, self.size, self.what, self.bar = client, file_id, state, size, what, bar
        self.requests = 0
        self.fetched = 0
        self.server_name: str | None = None

    def run(self, chunk_size: int) -> None:
        """Attempts until the whole body is on disk; failures in a row without progress count against retries."""
        attempt = 0
        while True:
            before = self.state.offset
            try:
                self._attempt(chunk_size)
                return
            except TransientError as err:
                if self.state.offset > before:
                    attempt = 0
                if attempt >= self.client.policy.retries:
                    raise PipelineError(
                        f"{self.what}: download failed {attempt + 1} times in a row, last: {err}; "
                        f"{self.state.offset} bytes are kept in {self.state.path} and a rerun resumes from there"
                    ) from None
                self.client.wait(attempt, err, self.what)
                attempt += 1

    def _attempt(self, chunk_size: int) -> None:
        state = self.state
        if self.size is not None and state.offset == self.size and self.size > 0:
            return  # everything is on disk already (an earlier run stopped before verifying)
        headers = {"Range": f"bytes={state.offset}-"} if state.offset else {}
        self.requests += 1
        try:
            resp = self.client.open(f"/data/{self.file_id}", headers=headers)
        except RangeNotSatisfiable as err:
            asked = state.offset
            state.reset()
            self.bar.reset(total=self.size)
            raise TransientError(f"{err} for bytes from {asked}; starting over") from None
        with resp:
            self.server_name = filename_from_disposition(resp.headers.get("Content-Disposition")) or self.server_name
            length = resp.headers.get("Content-Length")
            if resp.status == 206:
                start, _end, total = parse_content_range(resp.headers.get("Content-Range"))
                if start != state.offset:
                    asked = state.offset
                    state.reset()
                    self.bar.reset(total=self.size)
                    raise TransientError(f"server sent bytes from {start}, asked from {asked}; starting over")
            else:
                if state.offset:
                    log.info("%s: server ignored the Range request; starting again from byte 0", self.what)
                    state.reset()
                    self.bar.reset(total=self.size)
                total = int(length) if length is not None else None
            if self.size is not None and total is not None and total != self.size:
                raise PipelineError(
                    f"{self.what}: the server holds {total} bytes but the manifest says {self.size}; "
                    "the manifest is stale or names another file"
                )
            end = total if total is not None else self.size
            with open(state.path, "ab") as f:
                while True:
                    try:
                        block = resp.read(chunk_size)
                    except NETWORK_ERRORS as err:
                        raise TransientError(f"{type(err).__name__} after {state.offset} bytes") from None
                    if not block:
                        break
                    if end is not None and state.offset + len(block) > end:
                        raise PipelineError(f"{self.what}: the server sent more than the announced {end} bytes")
                    state.append(f, block)
                    self.fetched += len(block)
                    self.bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
            if end is not None and state.offset < end:
                raise TransientError(f"connection dropped after {state.offset} of {end} bytes")


def download_file(
    client: GdcClient,
    file_id: str,
    *,
    dest: PathLike | None = None,
    dest_dir: PathLike | None = None,
    filename: str | None = None,
    size: int | None = None,
    md5: str | None = None,
    verify_retries: int = 1,
    progress: bool = True,
    chunk_size: int = CHUNK,
) -> DownloadResult:
    """Download `/data/{file_id}` to `dest`, or into `dest_dir` under its sanitised name.

    With `md5`, a file already at `dest` that matches is kept without any request, and a download that does not
    match is fetched again from scratch `verify_retries` times before failing.
    """
    file_id = check_file_id(file_id)
    if (dest is None) == (dest_dir is None):
        raise ValueError("give exactly one of dest and dest_dir")
    md5 = md5.lower() if md5 else None
    if dest is not None:
        final: Path | None = Path(dest)
        partial = final.with_name(final.name + ".partial")
    else:
        dest_dir = Path(dest_dir)  # type: ignore[arg-type]
        final = dest_dir / sanitize_filename(filename, fallback=file_id) if filename else None
        partial = dest_dir / f"{file_id}.partial"
    what = f"file {file_id}" + (f" ({final.name})" if final else "")

    if final is not None and md5 and final.is_file():
        if (size is None or final.stat().st_size == size) and file_md5(final) == md5:
            log.info("%s: already present at %s with the right md5; not downloading", what, final)
            return DownloadResult(final, final.stat().st_size, md5, 0, 0)
        log.warning("%s: %s exists but does not match the manifest; downloading it again", what, final)

    partial.parent.mkdir(parents=True, exist_ok=True)
    state = _Partial(partial)
    state.resume(size)
    tty = sys.stderr.isatty()
    bar = tqdm(
        total=size, initial=state.offset, unit="B", unit_scale=True, unit_divisor=1024, desc=final.name if final else file_id,
        disable=not progress, file=sys.stderr, mininterval=0.5 if tty else 10.0, dynamic_ncols=tty,
    )  # fmt: skip
    t0 = time.perf_counter()
    fetch = _Fetch(client, file_id, state, size, what, bar)
    try:
        for verify_attempt in range(verify_retries + 1):
            fetch.run(chunk_size)
            digest = state.hasher.hexdigest()
            if md5 is None or digest == md5:
                break
            state.reset()
            bar.reset(total=size)
            if verify_attempt < verify_retries:
                log.warning("%s: md5 %s does not match the expected %s; downloading again", what, digest, md5)
                continue
            raise PipelineError(
                f"{what}: md5 of the downloaded bytes is {digest}, expected {md5} (after {verify_retries + 1} "
                f"download(s)); the data is corrupt or the manifest is wrong; the partial file was removed"
                + (f" and nothing was written to {final}" if final else "")
            )
    finally:
        bar.close()

    if size is not None and state.offset != size:
        raise PipelineError(f"{what}: received {state.offset} bytes, expected {size}")
    if final is None:
        final = Path(dest_dir) / sanitize_filename(fetch.server_name or "", fallback=file_id)  # type: ignore[arg-type]
        if final.resolve().parent != Path(dest_dir).resolve():  # type: ignore[arg-type]
            raise PipelineError(f"{what}: refusing to write outside {dest_dir}: {final}")
    os.replace(partial, final)
    seconds = max(time.perf_counter() - t0, 1e-9)
    log.info(
        "%s: %d bytes written to %s (%d fetched in %d request(s), %.1f MB/s), md5 %s",
        what, state.offset, final, fetch.fetched, fetch.requests, fetch.fetched / seconds / 1e6,
        "verified" if md5 else "not checked (none given)",
    )  # fmt: skip
    return DownloadResult(final, state.offset, state.hasher.hexdigest(), fetch.fetched, fetch.requests)


def download_slide(client: GdcClient, manifest: PathLike, slide_id: str, out: PathLike, **kwargs) -> DownloadResult:
    """The Snakemake job: the manifest row for `slide_id`, downloaded and verified to `out`."""
    entry = find_entry(read_manifest(manifest), slide_id, str(manifest))
    return download_file(client, entry.id, dest=out, size=entry.size, md5=entry.md5, **kwargs)
