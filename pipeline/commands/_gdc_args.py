"""Arguments shared by the GDC commands: the endpoint, the token file and the retry policy."""

from __future__ import annotations

import argparse

from pipeline.gdc.client import DEFAULT_API_URL, GdcClient, RetryPolicy, read_token


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("GDC connection")
    g.add_argument("--api-url", default=DEFAULT_API_URL, help="GDC API base URL (default: %(default)s)")
    g.add_argument(
        "--token-file",
        default="",
        help="file holding a GDC token, for controlled-access files (the value is never printed or written)",
    )
    g.add_argument("--retries", type=int, default=5, help="retries in a row per request (default: %(default)s)")
    g.add_argument(
        "--backoff",
        type=float,
        default=2.0,
        help="seconds before the first retry, doubling after (default: %(default)s)",
    )
    g.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default: %(default)s)")


def client_from_args(args: argparse.Namespace) -> GdcClient:
    policy = RetryPolicy(retries=args.retries, backoff_base=args.backoff, timeout=args.timeout)
    return GdcClient(args.api_url, token=read_token(args.token_file or None), policy=policy)
