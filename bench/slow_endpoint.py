#!/usr/bin/env python3
"""One slow endpoint of four: the client's latency through shoal-proxy with P2C-EWMA (the default),
with round robin, and through HAProxy with `balance leastconn`, in one run.

Four HTTP/1.1 backends (this script's own, asyncio): three answer after FAST_MS, one after SLOW_MS.
Each balancer gets the same wrk load (`wrk --latency`, fixed connections and duration); the report
is the client's p50/p99 and the share of requests the slow endpoint received.

    python3 bench/slow_endpoint.py [--duration 10] [--connections 16] [--proxy target/release/shoal-proxy]

Needs wrk and haproxy (Debian packages) and a release build of shoal-proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

FAST_MS = 2
SLOW_MS = 20
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backends:
    """Four asyncio HTTP/1.1 servers on one thread; counts requests per server."""

    def __init__(self, delays_ms: list[int]):
        self.ports = [free_port() for _ in delays_ms]
        self.delays = delays_ms
        self.counts = [0] * len(delays_ms)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        for i, port in enumerate(self.ports):
            self.loop.run_until_complete(
                asyncio.start_server(lambda r, w, i=i: self._serve(i, r, w), "127.0.0.1", port, backlog=1024)
            )
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b"ok\n"
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                self.counts[i] += 1
                await asyncio.sleep(self.delays[i] / 1000)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def reset(self) -> None:
        self.counts = [0] * len(self.counts)


def wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"slow_endpoint.py: {url} did not answer within {timeout}s")


def wrk(url: str, host: str, duration: int, connections: int) -> tuple[float, float, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Host: {host}", url],
        capture_output=True, text=True, check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            sys.exit(f"slow_endpoint.py: no {label} in wrk output:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return ms("50%"), ms("99%"), rps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--proxy", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "shoal-proxy"))
    args = ap.parse_args()
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"slow_endpoint.py: {tool} is not installed (apt-get install {tool})")
    backends = Backends([SLOW_MS, FAST_MS, FAST_MS, FAST_MS])
    work = Path(tempfile.mkdtemp(prefix="slow-endpoint-"))
    endpoints = "".join(f'\n      - address: "127.0.0.1:{p}"' for p in backends.ports)
    results = []
    for name, policy in (("shoal p2c_ewma", ""), ("shoal round_robin", "round_robin")):
        state = work / f"{policy or 'p2c'}.yaml"
        text = f"services:\n  - name: app\n    port: 80\n    hosts: [app]\n    endpoints:{endpoints}\n"
        if policy:
            text += f"backend_policies:\n  - service: app\n    load_balancer: {{algorithm: {policy}}}\n"
        state.write_text(text)
        port, admin = free_port(), free_port()
        env = dict(os.environ, SHOAL_OUTBOUND_MODE="explicit", SHOAL_OUTBOUND_ADDR=f"127.0.0.1:{port}",
                   SHOAL_INBOUND_MODE="off", SHOAL_ADMIN_ADDR=f"127.0.0.1:{admin}", SHOAL_STATE_FILE=str(state),
                   SHOAL_LOG="warn")
        proc = subprocess.Popen([args.proxy], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(f"http://127.0.0.1:{admin}/ready")
            backends.reset()
            p50, p99, rps = wrk(f"http://127.0.0.1:{port}/", "app", args.duration, args.connections)
            results.append((name, p50, p99, rps, backends.counts[0] / max(1, sum(backends.counts))))
        finally:
            proc.terminate()
            proc.wait()
    port = free_port()
    servers = "".join(f"    server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(backends.ports))
    cfg = work / "haproxy.cfg"
    cfg.write_text(
        "global\n    maxconn 4096\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n"
        f"    timeout server 30s\n    option http-keep-alive\nfrontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
        f"backend b\n    balance leastconn\n{servers}"
    )
    proc = subprocess.Popen(["haproxy", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/")
        backends.reset()
        p50, p99, rps = wrk(f"http://127.0.0.1:{port}/", "app", args.duration, args.connections)
        results.append(("haproxy leastconn", p50, p99, rps, backends.counts[0] / max(1, sum(backends.counts))))
    finally:
        proc.terminate()
        proc.wait()
    print(f"one endpoint of four answers in {SLOW_MS} ms, the others in {FAST_MS} ms; "
          f"wrk -c{args.connections} -d{args.duration}s")
    print(f"{'balancer':<20} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'to slow':>8}")
    for name, p50, p99, rps, share in results:
        print(f"{name:<20} {p50:>8.2f} {p99:>8.2f} {rps:>8.0f} {share:>7.1%}")


if __name__ == "__main__":
    main()
