"""Benchmark: GDC download throughput of our client against a plain socket copy, and the cost of the md5.

One synthetic file is served by the loopback GDC server of the tests (tests/gdc_server.py). The baseline sends
a bare `GET /data/{id}` over a socket and copies the bytes to a file (no parsing, no hashing, no fsync): the
fastest a Python client can be against that server; a second row adds the fsync ours does before the rename. Ours is `download_file` (urllib, `.partial`, streaming md5,
fsync, rename). The md5 row hashes the same bytes from memory, the part of our cost spent on verification.
Each variant runs `--repeats` times; the best run counts.

    /work/venv/bin/python bench/download.py [--mb 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pipeline.gdc import GdcClient, download_file  # noqa: E402

from gdc_server import FakeFile, GdcServer  # noqa: E402

CHUNK = 1 << 20


def socket_copy(url: str, file_id: str, dest: Path, fsync: bool = False) -> int:
    """GET over a raw socket; skip the header block, copy the body to `dest` (fsync'ed if asked)."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port)) as sock, open(dest, "wb") as out:
        sock.sendall(f"GET /data/{file_id} HTTP/1.0\r\nHost: {parsed.hostname}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        _, body = buf.split(b"\r\n\r\n", 1)
        out.write(body)
        n = len(body)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while got := sock.recv_into(buf):
            out.write(view[:got])
            n += got
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    return n


def best(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=256, help="size of the served file in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = os.urandom(args.mb << 20)
    f = FakeFile("bench.svs", data, "TCGA-LUAD", "TCGA-00-0000")
    with GdcServer([f]) as server, tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "bench.svs"
        client = GdcClient(server.url)

        def ours() -> None:
            dest.unlink(missing_ok=True)
            download_file(client, f.file_id, dest=dest, size=len(data), md5=f.md5, progress=False)

        def plain() -> None:
            assert socket_copy(server.url, f.file_id, Path(tmp) / "plain.bin") == len(data)

        def plain_fsync() -> None:
            assert socket_copy(server.url, f.file_id, Path(tmp) / "plain.bin", fsync=True) == len(data)

        def md5_only() -> None:
            h = hashlib.md5()
            view = memoryview(data)
            for i in range(0, len(data), CHUNK):
                h.update(view[i : i + CHUNK])
            assert h.hexdigest() == f.md5

        t_plain = best(plain, args.repeats)
        t_plain_fsync = best(plain_fsync, args.repeats)
        t_ours = best(ours, args.repeats)
        t_md5 = best(md5_only, args.repeats)

    mb = len(data) / 1e6
    print(f"file: {args.mb} MiB over loopback, best of {args.repeats}")
    print(f"{'variant':<34}{'seconds':>9}{'MB/s':>9}{'time vs socket copy':>22}")
    rows = [
        ("plain socket copy (baseline)", t_plain),
        ("plain socket copy + fsync", t_plain_fsync),
        ("ours: download_file (md5, fsync)", t_ours),
        ("md5 of the same bytes (in memory)", t_md5),
    ]
    for name, t in rows:
        print(f"{name:<34}{t:>9.3f}{mb / t:>9.0f}{t / t_plain:>21.2f}x")
    print(f"md5 share of our download time: {t_md5 / t_ours:.0%}; fsync'ed copy share: {t_plain_fsync / t_ours:.0%}")


if __name__ == "__main__":
    main()
