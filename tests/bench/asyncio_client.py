"""Submit load from a Python asyncio client, for aihost-bench (a benchmark tool, not a test).

Many users' clients are Python asyncio programs; issue 17 found that wrk's figure hides a gap
such a client sees. This opens CONNS keep-alive connections (aiohttp, one session) and POSTs the
same JSON body from CONNS workers for SECS seconds, then prints one JSON line:
`{"ok": N, "failed": M, "secs": S, "per_sec": N / S}` (ok counts 2xx answers).

Run: python asyncio_client.py URL BODY_JSON [--conns 64] [--secs 5] [--warmup 1]
"""

import argparse
import asyncio
import json
import time

import aiohttp


async def worker(session, url, body, deadline, counts):
    headers = {"content-type": "application/json"}
    while time.monotonic() < deadline:
        try:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                counts["ok" if 200 <= r.status < 300 else "failed"] += 1
        except aiohttp.ClientError:
            counts["failed"] += 1


async def run(url, body, conns, secs):
    counts = {"ok": 0, "failed": 0}
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        deadline = start + secs
        await asyncio.gather(
            *(worker(session, url, body, deadline, counts) for _ in range(conns))
        )
        elapsed = time.monotonic() - start
    counts["secs"] = elapsed
    counts["per_sec"] = counts["ok"] / elapsed
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("body")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--secs", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    body = json.dumps(json.loads(args.body)).encode()
    if args.warmup > 0:
        asyncio.run(run(args.url, body, args.conns, args.warmup))
    print(json.dumps(asyncio.run(run(args.url, body, args.conns, args.secs))))


if __name__ == "__main__":
    main()
