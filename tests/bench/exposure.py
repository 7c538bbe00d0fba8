#!/usr/bin/env python3
"""What a hostile or careless client can make an aihost process hold: RSS and connection
figures for the cases of "Running on the internet" (README), against a running release build.

Standard library only; raw sockets, so that clients can misbehave (not read, trickle bytes).

    python3 tests/bench/exposure.py --base http://127.0.0.1:8000 --pid PID CASE [options]

CASE is one of:
  list     30 tasks with 9 MB inputs, then GET /api/tasks?limit=1000 (and ?include=input)
  sse      N clients on the event stream of a running task with a 9 MB input, never reading
  ws       the same over WebSocket
  uploads  N concurrent 5 MB uploads
  slow     N sockets sending one byte of a request head per second
  idle     N connections that send nothing; /api/health timed meanwhile

The server needs the testkit plugin (task type testkit.run). RSS is read from /proc/PID/status
(VmRSS now, VmHWM the peak since start).
"""

import argparse
import asyncio
import json
import os
import resource
import time
import urllib.request


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) // 1024
    return out


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def http(base, method, path, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def health_ms(base):
    t = time.monotonic()
    try:
        status, _ = http(base, "GET", "/api/health", timeout=10)
    except Exception as e:  # noqa: BLE001 - reported as is
        return f"failed ({e.__class__.__name__})"
    return f"{status} in {(time.monotonic() - t) * 1000:.0f} ms"


def big_input(mode, mb, **extra):
    return {"mode": mode, "code": "x" * (mb * 1000 * 1000), **extra}


def host_port(base):
    hp = base.split("//", 1)[1]
    host, port = hp.rsplit(":", 1)
    return host, int(port)


def report(label, pid, **more):
    r = rss(pid)
    extra = " ".join(f"{k}={v}" for k, v in more.items())
    print(f"{label:<44} RSS {r['VmRSS']:>6} MB  peak {r['VmHWM']:>6} MB  fds {fds(pid):>6}  {extra}", flush=True)


def case_list(a):
    report("start", a.pid)
    for _ in range(30):
        status, body = http(a.base, "POST", "/api/tasks?wait=60", {"type": "testkit.run", "input": big_input("noop", 9)})
        assert status in (200, 202), body[:200]
    report("30 tasks with 9 MB inputs", a.pid)
    for path in ("/api/tasks?limit=1000", "/api/tasks?limit=1000&include=input"):
        t = time.monotonic()
        status, body = http(a.base, "GET", path)
        page = json.loads(body)
        report(f"GET {path}", a.pid, status=status, bytes=len(body), tasks=len(page["tasks"]),
               next_cursor=page.get("next_cursor") is not None, secs=f"{time.monotonic() - t:.2f}")


async def open_stream(host, port, request, results):
    try:
        r, w = await asyncio.open_connection(host, port)
        w.write(request)
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 60)
        results.append(head.split(b" ", 2)[1].decode())
        return r, w
    except Exception as e:  # noqa: BLE001 - counted
        results.append(e.__class__.__name__)
        return None


async def streams(a, ws):
    host, port = host_port(a.base)
    status, body = http(a.base, "POST", "/api/tasks", {"type": "testkit.run", "input": big_input("progress", 9, steps=10000)})
    task = json.loads(body)
    tid = task["task_id"]
    report("one running task with a 9 MB input", a.pid)
    if ws:
        req = (f"GET /api/tasks/{tid}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    else:
        req = f"GET /api/tasks/{tid}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    results, conns = [], []
    for i in range(0, a.n, 200):
        batch = await asyncio.gather(*(open_stream(host, port, req, results) for _ in range(min(200, a.n - i))))
        conns.extend(c for c in batch if c)
    counts = {s: results.count(s) for s in set(results)}
    report(f"{a.n} {'WebSocket' if ws else 'SSE'} clients, not reading", a.pid, answers=counts)
    for _ in range(a.hold // 5):
        await asyncio.sleep(5)
        report("  later", a.pid, health=health_ms(a.base))
    http(a.base, "POST", f"/api/tasks/{tid}/cancel")
    for _, w in conns:
        w.close()
    await asyncio.sleep(3)
    report("clients gone", a.pid)


async def one_upload(host, port, size, results):
    boundary = "BENCHBOUNDARY"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + size + len(tail)
    try:
        r, w = await asyncio.open_connection(host, port)
        w.write((f"POST /api/uploads HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n").encode() + head)
        chunk = b"u" * (256 * 1024)
        sent = 0
        while sent < size:
            n = min(len(chunk), size - sent)
            w.write(chunk[:n])
            await w.drain()
            sent += n
        w.write(tail)
        await w.drain()
        answer = await asyncio.wait_for(r.read(), 120)
        results.append(answer.split(b" ", 2)[1].decode())
        w.close()
    except Exception as e:  # noqa: BLE001 - counted
        results.append(e.__class__.__name__)


async def uploads(a):
    host, port = host_port(a.base)
    report("start", a.pid)
    results = []
    t = time.monotonic()
    task = asyncio.gather(*(one_upload(host, port, 5 * 1000 * 1000, results) for _ in range(a.n)))
    while not task.done():
        await asyncio.sleep(0.5)
        if time.monotonic() - t > 1:
            report("  during", a.pid)
            t = time.monotonic()
    await task
    report(f"{a.n} concurrent 5 MB uploads done", a.pid, answers={s: results.count(s) for s in set(results)})


async def slow(a):
    host, port = host_port(a.base)
    report("start", a.pid)
    start = time.monotonic()
    held = []

    async def trickle():
        r, w = await asyncio.open_connection(host, port)
        w.write(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t = time.monotonic()
        try:
            while time.monotonic() - t < a.hold:
                w.write(b"a")
                await w.drain()
                try:
                    data = await asyncio.wait_for(r.read(1), 1)
                    if not data:
                        break
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, OSError):
            pass
        held.append(time.monotonic() - t)
        w.close()

    tasks = [asyncio.create_task(trickle()) for _ in range(a.n)]
    await asyncio.sleep(2)
    report(f"{a.n} sockets trickling a byte a second", a.pid, health=health_ms(a.base))
    await asyncio.gather(*tasks)
    held.sort()
    print(f"held: min {held[0]:.1f} s, median {held[len(held) // 2]:.1f} s, max {held[-1]:.1f} s "
          f"(of {a.hold} s tried); total {time.monotonic() - start:.1f} s", flush=True)
    report("after", a.pid, health=health_ms(a.base))


async def idle(a):
    host, port = host_port(a.base)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report("start", a.pid)
    conns, failed = [], 0
    for i in range(0, a.n, 500):
        batch = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(min(500, a.n - i))),
                                     return_exceptions=True)
        for c in batch:
            if isinstance(c, Exception):
                failed += 1
            else:
                conns.append(c)
    report(f"{a.n} idle connections opened", a.pid, opened=len(conns), failed=failed, health=health_ms(a.base))
    for _ in range(a.hold // 5):
        await asyncio.sleep(5)
        report("  later", a.pid, health=health_ms(a.base))
    closed = 0
    for r, _ in conns:
        try:
            data = await asyncio.wait_for(r.read(1), 0.001)
            closed += data == b""
        except asyncio.TimeoutError:
            pass
        except (ConnectionError, OSError):
            closed += 1
    report("end", a.pid, closed_by_server=closed, of=len(conns), health=health_ms(a.base))
    for _, w in conns:
        w.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", choices=["list", "sse", "ws", "uploads", "slow", "idle"])
    p.add_argument("--base", default="http://127.0.0.1:8000")
    p.add_argument("--pid", type=int, required=True, help="the aihost process")
    p.add_argument("-n", type=int, default=0, help="clients (default per case)")
    p.add_argument("--hold", type=int, default=20, help="seconds to keep the clients")
    a = p.parse_args()
    a.n = a.n or {"list": 0, "sse": 2000, "ws": 2000, "uploads": 200, "slow": 300, "idle": 19990}[a.case]
    if a.case == "list":
        case_list(a)
    elif a.case in ("sse", "ws"):
        asyncio.run(streams(a, a.case == "ws"))
    elif a.case == "uploads":
        asyncio.run(uploads(a))
    elif a.case == "slow":
        asyncio.run(slow(a))
    else:
        asyncio.run(idle(a))


if __name__ == "__main__":
    main()
