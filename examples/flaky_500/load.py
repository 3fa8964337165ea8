"""Fire concurrent requests at the flaky-500 service and print the 500 rate.

    python examples/flaky_500/load.py -n 200 -c 10
    python examples/flaky_500/load.py --duration 60 -c 10      # keep going for a minute
    python examples/flaky_500/load.py -n 20 --latency staggered --json

Only 127.0.0.1 (or another loopback address) is accepted as target: this is a
local demo, not a load-testing tool.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import sys
import time
from urllib.parse import urlsplit

import httpx


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"load.py only sends traffic to loopback addresses, not {host!r}")


async def run(url: str, total: int | None, concurrency: int, duration: float | None,
              latency: str | None) -> dict[str, object]:
    statuses: collections.Counter[str] = collections.Counter()
    params = {"latency": latency} if latency else None
    deadline = time.monotonic() + duration if duration else None
    # Hard bounds, whatever the arguments: this never runs away.
    cap = total if total is not None else 1_000_000
    started = 0
    # No keep-alive: after an unhandled exception uvicorn closes the
    # connection it answered the 500 on, and a request racing that close would
    # be counted as a transport error instead of the 500 it is about.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)

    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal started
            while started < cap and (deadline is None or time.monotonic() < deadline):
                started += 1
                try:
                    response = await client.get(url, params=params)
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0

    done = sum(statuses.values())
    errors_500 = statuses.get("500", 0)
    return {
        "requests": done,
        "status": dict(sorted(statuses.items())),
        "500": errors_500,
        "rate_500": errors_500 / done if done else 0.0,
        "seconds": round(elapsed, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/ask")
    parser.add_argument("-n", "--requests", type=int, default=None,
                        help="total requests (default 100, or unbounded with --duration)")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--duration", type=float, default=None,
                        help="keep sending for this many seconds (at most 3600)")
    parser.add_argument("--latency", choices=("random", "staggered"), default=None,
                        help="latency model the service should use (default: its own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    _require_loopback(args.url)
    total = args.requests
    if total is None and args.duration is None:
        total = 100
    duration = min(args.duration, 3600.0) if args.duration else None
    result = asyncio.run(run(args.url, total, max(1, args.concurrency), duration, args.latency))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['requests']} requests in {result['seconds']} s, "
            f"concurrency {args.concurrency}: {result['500']} x HTTP 500 "
            f"-> 500 rate {result['rate_500']:.1%}   (status counts: {result['status']})"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
