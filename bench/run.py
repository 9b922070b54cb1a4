#!/usr/bin/env python3
"""Shoal data-plane benchmark: direct-to-backend vs shoal-proxy vs HAProxy vs nginx, in one run.

Python 3.11 standard library only. See bench/README.md for what is measured and how.

    python3 bench/run.py                      # 3 interleaved rounds, 10 s per measurement
    python3 bench/run.py --quick              # smoke run
    python3 bench/run.py --idle-conns 10000   # RSS per idle keep-alive client connection
"""

from __future__ import annotations

import argparse
import array
import atexit
import datetime
import gc
import hashlib
import json
import math
import os
import platform
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import string
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BACKEND_BIN = REPO / "target" / "release" / "bench-backend"
SHOAL_BIN = REPO / "target" / "release" / "shoal-proxy"
SHOAL_BASE_BIN: Path | None = None  # --shoal-base: a second shoal-proxy binary, target "shoal-base"
SHOAL_EXTRA_ENV: dict[str, dict[str, str]] = {}  # --shoal-env / --shoal-base-env, per target

LOADGEN_CPU = 0  # wrk, h2load, the paced client and this script
SERVER_CPU = 1  # backend and proxy under test

HOST = "127.0.0.1"  # every byte of traffic stays on loopback
ALL_TARGETS = ("direct", "shoal", "haproxy", "nginx", "shoal-base")
ALL_SCENARIOS = ("h1", "h2c", "h1-rate", "h2c-rate")
SCENARIO_TITLES = {
    "h1": "HTTP/1.1 closed loop (wrk)",
    "h2c": "h2c closed loop (h2load)",
    "h1-rate": "HTTP/1.1 fixed rate, 1 conn",
    "h2c-rate": "h2c fixed rate, 1 conn",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Skip(Exception):
    """A target could not be started or measured; the run goes on without it."""


_T0 = time.monotonic()


IDLE_SETTLE_S = 5.0


def log(msg: str) -> None:
    el = int(time.monotonic() - _T0)
    print(f"[{el // 60:02d}:{el % 60:02d}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Child processes: every one is started in its own session (process group) and registered, so
# that exit, an exception, Ctrl-C or SIGTERM kill all of them (nginx's worker included).

_children: list[subprocess.Popen] = []


def spawn(argv, cpu: int, env=None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
    def pin():
        os.sched_setaffinity(0, {cpu})

    p = subprocess.Popen(
        [str(a) for a in argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=pin,
    )
    _children.append(p)
    return p


def stop(p: subprocess.Popen | None, grace: float = 3.0) -> None:
    if p is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=wait)
            # The group leader is gone; make sure no member (an nginx worker) outlives it.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        except subprocess.TimeoutExpired:
            continue
    if p in _children:
        _children.remove(p)


def stop_all() -> None:
    for p in list(_children):
        stop(p, grace=1.0)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# ----------------------------------------------------------------------------------------------
# /proc helpers


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads, live or exited), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_busy_ticks(cpu: int) -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            return sum(v) - v[3] - v[4]
    return 0


def wait_quiet(max_pct: float, timeout: float) -> float:
    """Wait (up to timeout s) until neither CPU is busier than max_pct % over 0.5 s; nothing of
    ours runs between measurements, so whatever is busy is someone else (a build). Returns the
    last busy figure."""
    deadline = time.monotonic() + timeout
    while True:
        b0 = [cpu_busy_ticks(c) for c in (LOADGEN_CPU, SERVER_CPU)]
        time.sleep(0.5)
        b1 = [cpu_busy_ticks(c) for c in (LOADGEN_CPU, SERVER_CPU)]
        busy = max(100.0 * (y - x) / CLK_TCK / 0.5 for x, y in zip(b0, b1))
        if busy <= max_pct or time.monotonic() >= deadline:
            return busy


# ----------------------------------------------------------------------------------------------
# Ports and readiness

_used_ports: set[int] = set()


def free_port() -> int:
    """A free port below the ephemeral range, so it never collides with client sockets."""
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in _used_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port")


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def wait_port(port: int, proc: subprocess.Popen | None, what: str, logfile: Path | None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Skip(f"{what} exited with status {proc.returncode}\n{tail(logfile) if logfile else ''}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise Skip(f"{what} did not listen on {HOST}:{port} within {timeout:.0f}s\n{tail(logfile) if logfile else ''}")


def http_status(port: int, path: str) -> int:
    with socket.create_connection((HOST, port), timeout=1.0) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def wait_ready(port: int, proc: subprocess.Popen, what: str, logfile: Path, timeout=15.0):
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Skip(f"{what} exited with status {proc.returncode}\n{tail(logfile)}")
        try:
            code = http_status(port, "/ready")
            if code == 200:
                return
            last = f"status {code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise Skip(f"{what}: GET /ready on {HOST}:{port} never returned 200 ({last})\n{tail(logfile)}")


# ----------------------------------------------------------------------------------------------
# Backend and targets


class Server:
    """A started backend or proxy: its process group and the ports it serves."""

    def __init__(self, name, proc, h1_port, h2_port, logfile=None):
        self.name, self.proc, self.h1_port, self.h2_port, self.logfile = name, proc, h1_port, h2_port, logfile

    def pids(self) -> list[int]:
        """Every process of the server (nginx: master + worker)."""
        if self.proc is None:
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]

    def worker_pids(self) -> list[int]:
        """The processes that serve traffic: nginx's workers; otherwise the one process."""
        if self.proc is None:
            return []
        if self.name == "nginx":
            return descendants(self.proc.pid)
        return [self.proc.pid]

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self):
        stop(self.proc)

    def sides(self) -> dict[str, list[int]]:
        """The processes whose CPU time is this target's (measure_interleaved): none for direct."""
        return {"proxy": self.pids()} if self.proc is not None else {}

    def window_figures(self, side_ticks: dict[str, int], reqs: int) -> dict:
        """This target's CPU and memory figures over an interleaved window (measure_interleaved), with
        the keys measure() gives them."""
        if self.proc is None:
            return {"cpu_us_per_req": None, "peak_rss_kib": None, "peak_rss_all_kib": None}
        return {
            "cpu_us_per_req": side_ticks["proxy"] * 1e6 / CLK_TCK / reqs,
            "peak_rss_kib": sum(status_kib(p, "VmHWM") for p in self.worker_pids()),
            "peak_rss_all_kib": sum(status_kib(p, "VmHWM") for p in self.pids()),
        }

    def logs(self) -> str:
        return tail(self.logfile) if self.logfile else ""


class Ctx:
    # Connection limits (HAProxy's maxconn, nginx's worker_connections, a floor for shoal's
    # SHOAL_MAX_CONNECTIONS): 1024 is plenty for the load scenarios, and nginx preallocates
    # worker_connections connection structures, so a larger value would inflate its RSS there.
    LOAD_MAXCONN = 1024

    def __init__(self, tmp: Path, nofile: int):
        # nofile: the RLIMIT_NOFILE every child inherits (HAProxy's ulimit-n, nginx's worker_rlimit_nofile).
        self.tmp, self.maxconn, self.nofile, self.seq = tmp, self.LOAD_MAXCONN, nofile, 0

    def haproxy_maxconn(self) -> int:
        # HAProxy reserves two descriptors per connection (client + server) and refuses to start when
        # 2 x maxconn exceeds its ulimit-n, which cannot go past the hard RLIMIT_NOFILE.
        return min(self.maxconn, (self.nofile - 256) // 2)

    def logfile(self, name: str) -> Path:
        self.seq += 1
        return self.tmp / f"{self.seq:04d}-{name}.log"


def render(template: str, dest: Path, **values) -> Path:
    text = string.Template((BENCH_DIR / template).read_text()).substitute(**{k: str(v) for k, v in values.items()})
    dest.write_text(text)
    return dest


def start_backend(ctx: Ctx) -> Server:
    port = free_port()
    lf = ctx.logfile("backend")
    with open(lf, "wb") as f:
        p = spawn([BACKEND_BIN, f"{HOST}:{port}"], SERVER_CPU, stdout=f, stderr=f)
    s = Server("backend", p, port, port, lf)
    try:
        wait_port(port, p, "bench-backend", lf)
    except Skip:
        s.stop()
        raise
    return s


def start_target(ctx: Ctx, name: str, backend_port: int) -> Server:
    if name == "direct":
        return Server("direct", None, backend_port, backend_port)
    lf = ctx.logfile(name)
    h1, h2 = free_port(), free_port()
    if name in ("shoal", "shoal-base"):
        bin_path = SHOAL_BIN if name == "shoal" else SHOAL_BASE_BIN
        if name == "shoal-base" and bin_path is None:
            raise Skip("no --shoal-base binary given")
        if not bin_path.exists():
            raise Skip(f"{bin_path} not built (cargo build --release -p shoal-proxy)")
        admin = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env.update(
            SHOAL_INBOUND_MODE="explicit",
            SHOAL_INBOUND_ADDR=f"{HOST}:{h1}",
            SHOAL_INBOUND_APP_ADDR=f"{HOST}:{backend_port}",
            SHOAL_OUTBOUND_MODE="off",
            SHOAL_ADMIN_ADDR=f"{HOST}:{admin}",
            # Idle keep-alive connections must outlive the idle-connection measurement.
            SHOAL_HEADER_READ_TIMEOUT="300s",
            SHOAL_MAX_CONNECTIONS=str(max(20000, ctx.maxconn)),
        )
        env.update(SHOAL_EXTRA_ENV.get(name, {}))
        with open(lf, "wb") as f:
            p = spawn([bin_path], SERVER_CPU, env=env, stdout=f, stderr=f)
        s = Server(name, p, h1, h1, lf)
        try:
            wait_ready(admin, p, "shoal-proxy", lf)
            wait_port(h1, p, "shoal-proxy", lf)
        except Skip:
            s.stop()
            raise
        return s
    if name == "haproxy":
        if not shutil.which("haproxy"):
            raise Skip("haproxy not installed (apt-get install haproxy)")
        cfg = render(
            "haproxy.cfg.tmpl", ctx.tmp / "haproxy.cfg",
            h1_port=h1, h2_port=h2, backend_port=backend_port, maxconn=ctx.haproxy_maxconn(), nofile=ctx.nofile,
        )
        with open(lf, "wb") as f:
            p = spawn(["haproxy", "-db", "-f", cfg], SERVER_CPU, stdout=f, stderr=f)
    elif name == "nginx":
        if not shutil.which("nginx"):
            raise Skip("nginx not installed (apt-get install nginx-light)")
        cfg = render(
            "nginx.conf.tmpl", ctx.tmp / "nginx.conf",
            h1_port=h1, h2_port=h2, backend_port=backend_port, tmp=ctx.tmp,
            worker_connections=ctx.maxconn, nofile=ctx.nofile,
        )
        with open(lf, "wb") as f:
            p = spawn(["nginx", "-p", ctx.tmp, "-e", ctx.tmp / "nginx-error.log", "-c", cfg], SERVER_CPU,
                      stdout=f, stderr=f)
        lf = ctx.tmp / "nginx-error.log"
    else:
        raise Skip(f"unknown target {name}")
    s = Server(name, p, h1, h2, lf)
    try:
        wait_port(h1, p, name, lf)
        wait_port(h2, p, name, lf)
        if name == "nginx":
            deadline = time.monotonic() + 5
            while not s.worker_pids() and time.monotonic() < deadline:
                time.sleep(0.02)
    except Skip:
        s.stop()
        raise
    return s


# ----------------------------------------------------------------------------------------------
# Load generators (all pinned to LOADGEN_CPU)


def run_loadgen(argv, timeout: float) -> tuple[int, str, str]:
    p = spawn(argv, LOADGEN_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(p)
        raise Skip(f"load generator timed out: {' '.join(map(str, argv))}") from None
    except BaseException:  # Ctrl-C, SIGTERM: the generator goes too
        stop(p)
        raise
    _children.remove(p)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def percentile(sorted_vals, pct: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(pct / 100.0 * len(sorted_vals)) - 1))
    return float(sorted_vals[k])


def wrk(port: int, conns: int, seconds: int) -> dict:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
            "-s", BENCH_DIR / "wrk-report.lua", f"http://{HOST}:{port}/"]
    rc, out, err = run_loadgen(argv, seconds + 30)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if rc != 0 or line is None:
        raise Skip(f"wrk failed (rc {rc}): {err.strip() or out.strip()}")
    d = json.loads(line[len("WRKJSON "):])
    errors = d["err_connect"] + d["err_read"] + d["err_write"] + d["err_status"] + d["err_timeout"]
    return {
        "requests": d["requests"],
        "rps": d["requests"] / (d["duration_us"] / 1e6),
        "p50_us": float(d["p50_us"]),
        "p99_us": float(d["p99_us"]),
        "errors": errors,
    }


def h2load(port: int, args: list, timeout: float, logfile: Path | None) -> dict:
    argv = ["h2load", "-t1", *args]
    if logfile is not None:
        argv += ["--log-file", logfile]
    argv.append(f"http://{HOST}:{port}/")
    rc, out, err = run_loadgen(argv, timeout)
    res = {"rps": None, "requests": None, "errors": None}
    for ln in out.splitlines():
        if ln.startswith("finished in"):
            # finished in 10.00s, 131916.67 req/s, 4.91MB/s
            res["rps"] = float(ln.split(",")[1].split()[0])
        elif ln.startswith("requests:"):
            nums = [int(x.split()[0]) for x in ln[len("requests:"):].split(",")]
            total, _started, _done, succeeded, failed, errored, timeout_n = nums[:7]
            res["requests"] = succeeded
            res["errors"] = failed + errored + timeout_n
        elif ln.startswith("status codes:"):
            non2xx = sum(int(x.split()[0]) for x in ln[len("status codes:"):].split(",")[1:])
            res["errors"] = (res["errors"] or 0) + non2xx
    if rc != 0 or res["rps"] is None or res["requests"] is None:
        raise Skip(f"h2load failed (rc {rc}): {(err.strip() or out.strip())[-500:]}")
    if logfile is not None:
        lat = array.array("l")
        with open(logfile) as f:
            for ln in f:
                parts = ln.split("\t")
                if len(parts) >= 3 and parts[1] == "200":
                    lat.append(int(parts[2]))
        s = sorted(lat)
        res["p50_us"], res["p99_us"] = percentile(s, 50), percentile(s, 99)
        logfile.unlink(missing_ok=True)
    return res


def paced(targets: list[tuple[str, int]], proto: str, rate: int, seconds: float) -> dict[str, dict]:
    """Run the paced client against `targets` ((name, port) pairs, in interleave order), each at `rate`
    req/s on its own connection; its per-target result, keyed by name (a target whose connection failed:
    {"failed": reason})."""
    argv = [sys.executable, Path(__file__).resolve(), "--_paced", proto, str(rate), str(seconds),
            *(f"{name}={port}" for name, port in targets)]
    # Each failing target can cost one 5 s socket timeout on top of the window.
    rc, out, err = run_loadgen(argv, seconds + 30 + 5 * len(targets))
    if rc != 0:
        raise Skip(f"paced client failed (rc {rc}): {err.strip()[-500:]}")
    return json.loads(out)


# ----------------------------------------------------------------------------------------------
# The paced client: one keep-alive connection per target, each target at `rate` req/s on an absolute
# schedule, the targets interleaved request by request (target j of k at start + i/rate + j/(k·rate)); one
# request in flight at a time (no bursts, no pipelining), latency = send of the request to the end of the
# response. Its own overhead (tens of µs of Python) is in every target's figures, direct included, so it
# cancels out of the "added latency" columns; and since every target is measured in the same milliseconds,
# so does the drift of the machine's state from one window to the next.


class H1Conn:
    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.req = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        self.buf = bytearray()

    def request(self) -> int:
        self.sock.sendall(self.req)
        return read_h1_response(self.sock, self.buf)


def _recv_into(sock: socket.socket, buf: bytearray) -> None:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("connection closed by peer")
    buf += chunk


def read_h1_response(sock: socket.socket, buf: bytearray) -> int:
    while (end := buf.find(b"\r\n\r\n")) < 0:
        _recv_into(sock, buf)
    head = bytes(buf[:end]).decode("latin-1")
    del buf[: end + 4]
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = None, False
    for h in lines[1:]:
        k, _, v = h.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v.strip())
        elif k == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                _recv_into(sock, buf)
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            while len(buf) < eol + 2 + size + 2:
                _recv_into(sock, buf)
            del buf[: eol + 2 + size + 2]
            if size == 0:
                break
    elif length:
        while len(buf) < length:
            _recv_into(sock, buf)
        del buf[:length]
    return status


class H2Conn:
    """Just enough h2c (prior knowledge) for GET / one stream at a time."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.stream = -1
        authority = f"{HOST}:{port}".encode()
        # :method GET, :scheme http, :path / (static table), :authority literal without indexing.
        self.block = bytes([0x82, 0x86, 0x84, 0x01, len(authority)]) + authority
        settings = self.frame(4, 0, 0, struct.pack(">HI", 2, 0))  # ENABLE_PUSH = 0
        window = self.frame(8, 0, 0, struct.pack(">I", 1 << 30))  # connection window: plenty
        self.sock.sendall(self.PREFACE + settings + window)

    @staticmethod
    def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
        n = len(payload)
        return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream) + payload

    def request(self) -> int:
        self.stream += 2
        sid = self.stream
        self.sock.sendall(self.frame(1, 0x5, sid, self.block))  # HEADERS, END_STREAM | END_HEADERS
        status = 0
        while True:
            while len(self.buf) < 9:
                _recv_into(self.sock, self.buf)
            n = (self.buf[0] << 16) | (self.buf[1] << 8) | self.buf[2]
            ftype, flags = self.buf[3], self.buf[4]
            fsid = struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
            while len(self.buf) < 9 + n:
                _recv_into(self.sock, self.buf)
            payload = bytes(self.buf[9: 9 + n])
            del self.buf[: 9 + n]
            if ftype == 4 and not flags & 1:  # SETTINGS -> ack
                self.sock.sendall(self.frame(4, 1, 0, b""))
            elif ftype == 6 and not flags & 1:  # PING -> ack
                self.sock.sendall(self.frame(6, 1, 0, payload))
            elif ftype == 7:
                raise ConnectionError("GOAWAY received")
            elif fsid == sid:
                if ftype == 3:
                    raise ConnectionError("RST_STREAM received")
                if ftype == 1:  # HEADERS
                    block = payload
                    if flags & 0x8:  # PADDED
                        block = block[1: len(block) - payload[0]]
                    if flags & 0x20:  # PRIORITY
                        block = block[5:]
                    # :status 200 is static-table entry 8, which every server here sends indexed.
                    status = 200 if block[:1] == b"\x88" else -1
                if ftype in (0, 1) and flags & 0x1:  # END_STREAM
                    return status


def paced_main(proto: str, rate: int, seconds: float, targets: list[tuple[str, int]]) -> None:
    """The paced client (run as `run.py --_paced PROTO RATE SECONDS NAME=PORT...`, on the load generator's
    CPU): interleaves requests across the targets' connections as described above and prints one JSON
    object, name -> {requests, rps, p50_us, p99_us, errors, late} or {"failed": reason, "requests": n}. A
    target whose connection fails is dropped from the interleave; the others keep their schedule."""
    gc.disable()
    names, conns, out = [], [], {}
    for name, port in targets:
        try:
            conn = H1Conn(port) if proto == "h1" else H2Conn(port)
            conn.sock.settimeout(5.0)  # a lost response becomes an error, not a hang
            conn.request()  # connection set-up: not measured
        except (OSError, ConnectionError) as e:
            out[name] = {"failed": f"paced {proto} client: {name} (port {port}): first request failed: "
                                   f"{e or type(e).__name__}", "requests": 0}
            continue
        names.append(name)
        conns.append(conn)
    k = len(conns)
    n = int(rate * seconds)
    interval = 1_000_000_000 // rate  # per target
    offsets = [j * interval // max(1, k) for j in range(k)]  # target j's slot within each interval
    lat = [array.array("q") for _ in range(k)]
    errors, late, failed = [0] * k, [0] * k, [None] * k
    clock = time.perf_counter_ns
    start = clock() + 5_000_000
    for i in range(n):
        base = start + i * interval
        for j in range(k):
            if failed[j] is not None:
                continue
            due = base + offsets[j]
            now = clock()
            if due > now:
                time.sleep((due - now) / 1e9)
            elif now - due > interval:
                late[j] += 1
            t0 = clock()
            try:
                status = conns[j].request()
            except (OSError, ConnectionError) as e:
                failed[j] = (f"paced {proto} client: {names[j]}: request {i + 1}/{n} failed after "
                             f"{(clock() - t0) / 1e9:.1f} s: {e or type(e).__name__} "
                             f"({len(lat[j])} responses before it)")
                conns[j].sock.close()
                continue
            t1 = clock()
            if status == 200:
                lat[j].append(t1 - t0)
            else:
                errors[j] += 1
    elapsed = (clock() - start) / 1e9
    for j, name in enumerate(names):
        if failed[j] is not None:
            out[name] = {"failed": failed[j], "requests": len(lat[j]) + errors[j]}
            continue
        s = sorted(lat[j])
        out[name] = {
            "requests": len(s),
            "rps": len(s) / elapsed,
            "p50_us": percentile(s, 50) / 1000.0,
            "p99_us": percentile(s, 99) / 1000.0,
            "errors": errors[j],
            "late": late[j],
        }
    json.dump(out, sys.stdout)


# ----------------------------------------------------------------------------------------------
# One measurement: fresh backend + fresh target, warm-up, measured window (closed loop: measure(); fixed
# rate: measure_interleaved(), every target in the same window)


def warm_up(args, scenario: str, h1: int, h2: int) -> None:
    """Unmeasured warm-up for `scenario` on the h1 / h2c ports: connections, pools, allocator."""
    warm = args.warmup
    if scenario == "h1":
        wrk(h1, args.h1_conns, max(1, round(warm)))
    elif scenario == "h2c":
        h2load(h2, ["-c", str(args.h2_conns), "-m", str(args.h2_streams), "-D", f"{int(warm * 1000)}ms"],
               warm + 30, None)
    else:
        extra = ["--h1"] if scenario == "h1-rate" else []
        h2load(h1 if scenario == "h1-rate" else h2, [*extra, "-c1", "-n", "500"], 30, None)
    time.sleep(0.2)


def run_load(ctx: Ctx, args, scenario: str, h1: int, h2: int) -> dict:
    """The measured load of `scenario` for `args.duration` seconds; the load generator's result."""
    d = args.duration
    if scenario == "h1":
        return wrk(h1, args.h1_conns, d)
    if scenario == "h2c":
        return h2load(h2, ["-c", str(args.h2_conns), "-m", str(args.h2_streams), "-D", str(d)],
                      d + 60, ctx.tmp / "h2load.log")
    # A fixed-rate scenario on one target alone (main() measures them interleaved: measure_interleaved).
    proto, port = ("h1", h1) if scenario == "h1-rate" else ("h2", h2)
    r = paced([("target", port)], proto, args.rate, d)["target"]
    if "failed" in r:
        raise Skip(r["failed"])
    return r


def measure(ctx: Ctx, args, target: str, scenario: str) -> dict:
    """One target alone in a window of `scenario` (the closed-loop scenarios): fresh backend and target,
    warm-up, measured window; the load generator's result plus CPU, peak RSS and foreign load."""
    backend = start_backend(ctx)
    srv = None
    try:
        srv = start_target(ctx, target, backend.h1_port)
        h1, h2 = srv.h1_port, srv.h2_port
        warm_up(args, scenario, h1, h2)

        proxy_pids, backend_pid = srv.pids(), backend.proc.pid
        p0 = sum(cpu_ticks(p) for p in proxy_pids)
        b0 = cpu_ticks(backend_pid)
        c0 = cpu_busy_ticks(SERVER_CPU)
        w0 = time.monotonic()
        r = run_load(ctx, args, scenario, h1, h2)
        wall = time.monotonic() - w0
        p1 = sum(cpu_ticks(p) for p in proxy_pids)
        b1 = cpu_ticks(backend_pid)
        c1 = cpu_busy_ticks(SERVER_CPU)

        if not srv.alive():
            raise Skip(f"{target} died during the measurement\n{tail(srv.logfile) if srv.logfile else ''}")
        tick_us = 1e6 / CLK_TCK
        reqs = max(1, r["requests"])
        proxy_cpu_ticks = p1 - p0
        backend_cpu_ticks = b1 - b0
        foreign = (c1 - c0) - proxy_cpu_ticks - backend_cpu_ticks
        r.update(
            wall_s=wall,
            cpu_us_per_req=(proxy_cpu_ticks * tick_us / reqs) if srv.proc else None,
            backend_cpu_us_per_req=backend_cpu_ticks * tick_us / reqs,
            # Peak RSS: VmHWM summed over the serving processes (nginx: the worker, not the master).
            peak_rss_kib=sum(status_kib(p, "VmHWM") for p in srv.worker_pids()) if srv.proc else None,
            peak_rss_all_kib=sum(status_kib(p, "VmHWM") for p in srv.pids()) if srv.proc else None,
            backend_peak_rss_kib=status_kib(backend_pid, "VmHWM"),
            # CPU 1 time used by anything but backend + proxy (other builds...): a noise indicator.
            foreign_cpu1_pct=100.0 * foreign * tick_us / 1e6 / wall,
            loadavg=os.getloadavg()[0],
        )
        return r
    finally:
        if srv is not None:
            srv.stop()
        backend.stop()


RATE_SCENARIOS = ("h1-rate", "h2c-rate")


def ticks_of(pids) -> int:
    """utime + stime summed over `pids`; a process already gone counts 0 (its target is reported dead)."""
    total = 0
    for p in pids:
        try:
            total += cpu_ticks(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def measure_interleaved(ctx: Ctx, args, scenario: str, order: list[str], start, profile=None) -> dict[str, dict]:
    """One window of a fixed-rate scenario with every target of `order` at once: one fresh backend,
    every target started against it (`start(ctx, name, backend_port)`: an object with h1_port, h2_port,
    alive(), stop(), sides(), window_figures() and logs(), like Server; direct = the backend itself) and
    warmed up as in measure(), then one paced client interleaving requests across the targets in `order`,
    each at --rate req/s on its own connection. Returns name -> result (measure()'s keys) or {"skipped":
    reason}: a target that fails to start, to warm up, to answer or that dies is skipped alone.
    `profile(started)`, if given, is started before the window and its stop() called after it."""
    results: dict[str, dict] = {}
    try:
        backend = start_backend(ctx)
    except Skip as e:
        return {t: {"skipped": f"backend: {e}"} for t in order}
    started: dict = {}
    try:
        for t in order:
            try:
                started[t] = start(ctx, t, backend.h1_port)
            except Skip as e:
                results[t] = {"skipped": str(e)}
        live: dict = {}
        for t, srv in started.items():
            try:
                warm_up(args, scenario, srv.h1_port, srv.h2_port)
                live[t] = srv
            except Skip as e:
                results[t] = {"skipped": f"warm-up: {e}"}
        if not live:
            return {t: results[t] for t in order}
        proto = "h1" if scenario == "h1-rate" else "h2"
        ports = [(t, srv.h1_port if proto == "h1" else srv.h2_port) for t, srv in live.items()]
        sides = {t: srv.sides() for t, srv in live.items()}
        backend_pid = backend.proc.pid
        prof = profile(live) if profile else None
        t0 = {t: {k: ticks_of(pids) for k, pids in sd.items()} for t, sd in sides.items()}
        b0 = ticks_of([backend_pid])
        c0 = cpu_busy_ticks(SERVER_CPU)
        w0 = time.monotonic()
        try:
            out = paced(ports, proto, args.rate, args.duration)
        except Skip as e:
            return {t: results.get(t) or {"skipped": str(e)} for t in order}
        wall = time.monotonic() - w0
        t1 = {t: {k: ticks_of(pids) for k, pids in sd.items()} for t, sd in sides.items()}
        b1 = ticks_of([backend_pid])
        c1 = cpu_busy_ticks(SERVER_CPU)
        if prof is not None:
            prof.stop()

        tick_us = 1e6 / CLK_TCK
        ours = (b1 - b0) + sum(t1[t][k] - t0[t][k] for t in t0 for k in t0[t])
        # CPU 1 time used by anything but the backend and every target's processes: a noise indicator.
        foreign = 100.0 * ((c1 - c0) - ours) * tick_us / 1e6 / wall
        # The backend serves every target's requests: its CPU is per request of all of them.
        backend_reqs = max(1, sum(r.get("requests") or 0 for r in out.values()))
        for t, srv in live.items():
            r = out.get(t) or {"failed": "no result from the paced client"}
            if not srv.alive():
                why = r.get("failed", "after its last request")
                results[t] = {"skipped": f"{t} died during the measurement ({why})\n{srv.logs()}"}
                continue
            if "failed" in r:
                results[t] = {"skipped": f"{r['failed']}\n{srv.logs()}"}
                continue
            r.update(
                wall_s=wall,
                **srv.window_figures({k: t1[t][k] - t0[t][k] for k in t0[t]}, max(1, r["requests"])),
                backend_cpu_us_per_req=(b1 - b0) * tick_us / backend_reqs,
                backend_peak_rss_kib=status_kib(backend_pid, "VmHWM"),
                foreign_cpu1_pct=foreign,
                loadavg=os.getloadavg()[0],
                interleave=[name for name, _ in ports],
            )
            results[t] = r
        return {t: results[t] for t in order}
    finally:
        for srv in started.values():
            srv.stop()
        backend.stop()


def window_foreign(results: dict[str, dict]) -> float:
    """The foreign load of an interleaved window (every measured target carries the same figure); 0 when
    nothing was measured, so such a window is not measured again."""
    return max((r["foreign_cpu1_pct"] for r in results.values() if "skipped" not in r), default=0.0)


def measure_quietly(args, what: str, fn, foreign=lambda r: r["foreign_cpu1_pct"]):
    """Run fn() (a measurement) after waiting for a quiet machine (--quiet-wait); re-measure a window with
    more than --max-foreign % foreign load up to --retries times and keep the quietest."""
    r = None
    for attempt in range(1 + args.retries):
        if args.quiet_wait > 0:
            busy = wait_quiet(args.max_foreign, args.quiet_wait)
            if busy > args.max_foreign:
                log(f"note: machine still {busy:.0f}% busy after waiting {args.quiet_wait:.0f}s")
        a = fn()
        if r is None or foreign(a) < foreign(r):
            r = a
        if foreign(a) <= args.max_foreign:
            break
        if attempt < args.retries:
            log(f"note: {foreign(a):.0f}% foreign load on CPU {SERVER_CPU} during {what}: measuring again")
    return r


def measure_idle(ctx: Ctx, target: str, n: int) -> dict:
    ctx.maxconn = n + Ctx.LOAD_MAXCONN
    try:
        return _measure_idle(ctx, target, n)
    finally:
        ctx.maxconn = Ctx.LOAD_MAXCONN


def count_readable(conns) -> int:
    """How many of the sockets `conns` are readable now (closed by the server, or sent something)."""
    poller = select.poll()
    for s in conns:
        poller.register(s, select.POLLIN | select.POLLHUP | select.POLLRDHUP)
    return len(poller.poll(0))


def _measure_idle(ctx: Ctx, target: str, n: int) -> dict:
    backend = start_backend(ctx)
    srv = None
    conns: list[socket.socket] = []
    try:
        srv = start_target(ctx, target, backend.h1_port)
        if target == "haproxy" and n > ctx.haproxy_maxconn() - 64:
            n = ctx.haproxy_maxconn() - 64
            log(f"note: haproxy can hold only {n:,} connections under RLIMIT_NOFILE {ctx.nofile}; measuring with {n:,}")
        port = srv.h1_port
        watched = srv if srv.proc is not None else backend  # direct: the backend itself
        # Establish the upstream pool with a few requests, then take the baseline.
        c = H1Conn(port)
        for _ in range(20):
            c.request()
        c.sock.close()
        time.sleep(0.5)
        pids = watched.worker_pids()
        rss0 = sum(status_kib(p, "VmRSS") for p in pids)
        fds0 = sum(fd_count(p) for p in pids)
        req = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        t0 = time.monotonic()
        for _ in range(n):
            s = socket.create_connection((HOST, port), timeout=10)
            try:
                s.sendall(req)
                status = read_h1_response(s, bytearray())
            except OSError as e:
                s.close()
                raise Skip(f"{target}: connection {len(conns) + 1:,}: {e or type(e).__name__}") from None
            if status != 200:
                raise Skip(f"{target}: idle-connection request got status {status}")
            conns.append(s)
        open_s = time.monotonic() - t0
        # Idle means idle: give every server a few seconds without traffic before reading RSS (shoal
        # parks keep-alive connections idle for 1 s and returns their buffers within the next second).
        time.sleep(IDLE_SETTLE_S)
        rss1 = sum(status_kib(p, "VmRSS") for p in pids)
        fds1 = sum(fd_count(p) for p in pids)
        # Which client connections has the server closed meanwhile (readable = EOF)?
        closed = count_readable(conns)
        if not srv.alive():
            raise Skip(f"{target} died while holding idle connections")
        return {
            "conns": n,
            "still_open": n - closed,
            "open_s": open_s,
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "bytes_per_conn": (rss1 - rss0) * 1024.0 / n,
            "fds_added": fds1 - fds0,
            "peak_rss_kib": sum(status_kib(p, "VmHWM") for p in pids),
            "measured": "backend" if srv.proc is None else target,
        }
    finally:
        for s in conns:
            s.close()
        if srv is not None:
            srv.stop()
        backend.stop()


# ----------------------------------------------------------------------------------------------
# Aggregation and reporting


def med(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def summarize(rounds: list, targets, scenarios) -> dict:
    summary = {}
    for sc in scenarios:
        summary[sc] = {}
        for t in targets:
            runs = [rd[sc].get(t) for rd in rounds if sc in rd]
            ok = [(i, r) for i, r in enumerate(runs) if r and "skipped" not in r]
            if not ok:
                reasons = sorted({r["skipped"].splitlines()[0] for r in runs if r and "skipped" in r})
                summary[sc][t] = {"skipped": "; ".join(reasons) or "not run"}
                continue
            row = {"rounds": len(ok)}
            for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "backend_cpu_us_per_req", "peak_rss_kib",
                      "peak_rss_all_kib", "errors", "foreign_cpu1_pct", "late"):
                row[k] = med([r.get(k) for _, r in ok])
            ratios, add50, add99 = [], [], []
            for i, r in ok:
                d = rounds[i][sc].get("direct")
                if d and "skipped" not in d:
                    ratios.append(r["rps"] / d["rps"])
                    add50.append(r["p50_us"] - d["p50_us"])
                    add99.append(r["p99_us"] - d["p99_us"])
            row["ratio_vs_direct"] = med(ratios)
            row["added_p50_us"] = med(add50)
            row["added_p99_us"] = med(add99)
            summary[sc][t] = row
    return summary


def fmt(v, spec="{:,.0f}", none="–"):
    return none if v is None else spec.format(v)


def print_table(summary: dict, targets, scenarios) -> str:
    head = ["scenario", "target", "req/s", "× direct", "p50 µs", "p99 µs", "+p50 µs", "+p99 µs",
            "proxy CPU µs/req", "backend CPU µs/req", "peak RSS MiB"]
    rows = []
    for sc in scenarios:
        for t in targets:
            r = summary[sc][t]
            if "skipped" in r:
                rows.append([sc, t, "skipped: " + r["skipped"][:60]] + [""] * (len(head) - 3))
                continue
            direct = t == "direct"
            rows.append([
                sc, t, fmt(r["rps"]), fmt(r["ratio_vs_direct"], "{:.2f}"),
                fmt(r["p50_us"]), fmt(r["p99_us"]),
                "" if direct else fmt(r["added_p50_us"], "{:+,.0f}"),
                "" if direct else fmt(r["added_p99_us"], "{:+,.0f}"),
                fmt(r["cpu_us_per_req"], "{:.1f}"), fmt(r["backend_cpu_us_per_req"], "{:.1f}"),
                fmt(None if r["peak_rss_kib"] is None else r["peak_rss_kib"] / 1024, "{:.1f}"),
            ])
    return markdown(head, rows)


def markdown(head, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def idle_table(idle_summary: dict, targets) -> str:
    head = ["target", "conns", "still open", "RSS before MiB", "RSS after MiB", "bytes/conn", "fds added"]
    rows = []
    for t in targets:
        r = idle_summary.get(t)
        if r is None or "skipped" in r:
            rows.append([t, "skipped: " + (r or {}).get("skipped", "not run")[:60], "", "", "", "", ""])
            continue
        name = t + (" (backend)" if r["measured"] == "backend" else "")
        rows.append([name, fmt(r["conns"]), fmt(r["still_open"]), fmt(r["rss_before_kib"] / 1024, "{:.1f}"),
                     fmt(r["rss_after_kib"] / 1024, "{:.1f}"), fmt(r["bytes_per_conn"]), fmt(r["fds_added"])])
    return markdown(head, rows)


def tool_version(argv) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else ""
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def machine_info() -> dict:
    model = ""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "haproxy": tool_version(["haproxy", "-v"]),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "h2load": tool_version(["h2load", "--version"]),
        "shoal_proxy_built": (datetime.datetime.fromtimestamp(SHOAL_BIN.stat().st_mtime).isoformat(timespec="seconds")
                              if SHOAL_BIN.exists() else None),
        "shoal_proxy_sha256": (hashlib.sha256(SHOAL_BIN.read_bytes()).hexdigest()[:16] if SHOAL_BIN.exists() else None),
    }


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))  # inherited by children
            return target
        except (ValueError, OSError):
            continue
    return soft


def build() -> None:
    log("building: cargo build --release -p shoal-bench -p shoal-proxy")
    r = subprocess.run(["cargo", "build", "--release", "-p", "shoal-bench", "-p", "shoal-proxy"], cwd=REPO)
    if r.returncode != 0:
        log("shoal-proxy does not build; building the backend alone")
        subprocess.run(["cargo", "build", "--release", "-p", "shoal-bench"], cwd=REPO, check=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS[:4]),
                    help="comma-separated subset of %(default)s (direct is the baseline for ratios), plus "
                         "shoal-base with --shoal-base")
    ap.add_argument("--scenarios", default=None,
                    help=f"comma-separated subset of {','.join(ALL_SCENARIOS)}, or 'none' "
                         "(default: all, or none with --idle-conns)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured warm-up (default 1)")
    ap.add_argument("--rate", type=int, default=1000,
                    help="req/s per target of the fixed-rate scenarios (default 1000)")
    ap.add_argument("--h1-conns", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--h2-conns", type=int, default=10, help="h2load connections (default 10)")
    ap.add_argument("--h2-streams", type=int, default=10, help="h2load streams per connection (default 10)")
    ap.add_argument("--quiet-wait", type=float, default=None, metavar="S",
                    help="before each measurement wait up to S s for other load to drop below --max-foreign "
                         "(default 30; 0 with --quick)")
    ap.add_argument("--max-foreign", type=float, default=20.0, metavar="PCT",
                    help="CPU %% used by other processes that counts as a noisy window (default 20)")
    ap.add_argument("--retries", type=int, default=None,
                    help="re-measure a noisy window up to this many times, keep the quietest (default 1; 0 with --quick)")
    ap.add_argument("--idle-conns", type=int, default=0, metavar="N",
                    help="measure proxy RSS per idle keep-alive client connection with N connections")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s per measurement")
    ap.add_argument("--json", metavar="FILE", help="write machine-readable results here")
    ap.add_argument("--build", action="store_true", help="cargo build --release -p shoal-bench -p shoal-proxy first")
    ap.add_argument("--shoal-bin", metavar="PATH",
                    help="the shoal-proxy binary of target shoal (default target/release/shoal-proxy)")
    ap.add_argument("--shoal-base", metavar="PATH",
                    help="a second shoal-proxy binary (e.g. a copy of the previous build), measured as target "
                         "'shoal-base' for A/B comparisons in the same run")
    ap.add_argument("--shoal-env", metavar="K=V,...", default="",
                    help="extra environment for target shoal (e.g. settings under test)")
    ap.add_argument("--shoal-base-env", metavar="K=V,...", default="",
                    help="extra environment for target shoal-base")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--_paced", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 0.5
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 30.0
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    return args


def log_result(tag: str, sc: str, t: str, r: dict) -> None:
    """One progress line for a measured (or skipped) target."""
    if "skipped" in r:
        log(f"{tag} {sc:8} {t:8} SKIPPED: {r['skipped']}")
        return
    cpu = "" if r["cpu_us_per_req"] is None else f", proxy {r['cpu_us_per_req']:.1f} µs/req"
    rss = "" if r["peak_rss_kib"] is None else f", peak RSS {r['peak_rss_kib'] / 1024:.1f} MiB"
    late = f", late {r['late']}" if r.get("late") else ""
    log(f"{tag} {sc:8} {t:8} {r['rps']:>10,.0f} req/s  "
        f"p50 {r['p50_us']:,.0f} µs  p99 {r['p99_us']:,.0f} µs{cpu}{rss}"
        f"{', errors ' + str(r['errors']) if r['errors'] else ''}{late}"
        f"  (foreign load on CPU {SERVER_CPU}: {r['foreign_cpu1_pct']:.0f}%)")


def print_scenario_notes(args, scenarios, paced: str) -> None:
    """One line per scenario: what it is and the load generator's settings."""
    for sc in scenarios:
        print(f"- {sc}: {SCENARIO_TITLES[sc]}", end="")
        if sc == "h1":
            print(f", -t1 -c{args.h1_conns}")
        elif sc == "h2c":
            print(f", -t1 -c{args.h2_conns} -m{args.h2_streams}")
        else:
            print(f", {args.rate} req/s per target ({paced}; all targets in one window, requests interleaved)")


def main() -> int:
    global BACKEND_BIN, SHOAL_BIN, SHOAL_BASE_BIN, SHOAL_EXTRA_ENV
    args = parse_args()
    if args._paced:
        proto, rate, seconds, *targets = args._paced
        paced_main(proto, int(rate), float(seconds), [(t.split("=")[0], int(t.split("=")[1])) for t in targets])
        return 0

    # Explicitly, because a shell starts background jobs with SIGINT ignored, which Python keeps.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(stop_all)
    os.sched_setaffinity(0, {LOADGEN_CPU})

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in ALL_TARGETS:
            log(f"unknown target {t!r}; choose from {','.join(ALL_TARGETS)}")
            return 2
    if args.scenarios is None:
        args.scenarios = "none" if args.idle_conns else ",".join(ALL_SCENARIOS)
    scenarios = [] if args.scenarios == "none" else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in ALL_SCENARIOS:
            log(f"unknown scenario {s!r}; choose from {','.join(ALL_SCENARIOS)}")
            return 2
    if os.cpu_count() is None or os.cpu_count() < 2:
        log("needs at least 2 CPUs (load generator on CPU 0, backend + proxy on CPU 1)")
        return 2
    if args.build:
        build()
    if not BACKEND_BIN.exists():
        log(f"{BACKEND_BIN} not found: run cargo build --release -p shoal-bench -p shoal-proxy (or pass --build)")
        return 2
    missing = [tool for tool in ("wrk", "h2load") if not shutil.which(tool)]
    if missing:
        log(f"missing {', '.join(missing)}: apt-get install wrk nghttp2-client")
        return 2
    if "direct" not in targets:
        log("note: without the direct target there is no baseline: ratio and added-latency columns stay empty")

    nofile = raise_nofile(4 * (args.idle_conns + Ctx.LOAD_MAXCONN))
    if args.idle_conns and nofile < args.idle_conns + 512:
        log(f"RLIMIT_NOFILE is {nofile}: too low for {args.idle_conns} idle connections")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    ctx = Ctx(tmp, nofile)
    # Snapshot the binaries: a concurrent `cargo build --release` must not swap them mid-run.
    BACKEND_BIN = Path(shutil.copy2(BACKEND_BIN, tmp / "bench-backend"))
    if args.shoal_bin:
        SHOAL_BIN = Path(args.shoal_bin)
        if not SHOAL_BIN.is_file():
            log(f"--shoal-bin {SHOAL_BIN}: no such file")
            return 2
    if SHOAL_BIN.exists():
        SHOAL_BIN = Path(shutil.copy2(SHOAL_BIN, tmp / "shoal-proxy"))
    for target, spec in (("shoal", args.shoal_env), ("shoal-base", args.shoal_base_env)):
        pairs = [p for p in spec.split(",") if p]
        if any("=" not in p for p in pairs):
            log(f"--{target}-env: expected K=V,..., got {spec!r}")
            return 2
        SHOAL_EXTRA_ENV[target] = dict(p.split("=", 1) for p in pairs)
    if args.shoal_base:
        base = Path(args.shoal_base)
        if not base.is_file():
            log(f"--shoal-base {base}: no such file")
            return 2
        SHOAL_BASE_BIN = Path(shutil.copy2(base, tmp / "shoal-proxy-base"))
    meta = machine_info()
    meta.update(command="python3 bench/run.py " + " ".join(sys.argv[1:]), targets=targets, scenarios=scenarios,
                rounds=args.rounds, duration_s=args.duration, warmup_s=args.warmup, rate=args.rate,
                h1_conns=args.h1_conns, h2_conns=args.h2_conns, h2_streams=args.h2_streams,
                idle_conns=args.idle_conns, nofile=nofile, quiet_wait_s=args.quiet_wait,
                max_foreign_pct=args.max_foreign, retries=args.retries)
    log(f"shoal-bench: {meta['date_utc']}, {meta['cpus']} CPUs ({meta['cpu_model']}), temp dir {tmp}")
    rounds: list[dict] = []
    idle_rounds: list[dict] = []
    try:
        for rnd in range(args.rounds):
            k = rnd % len(targets)
            order = targets[k:] + targets[:k]  # rotate so no target always runs first
            rd: dict = {}
            for sc in scenarios:
                rd[sc] = {}
                if sc in RATE_SCENARIOS:
                    # Every target in one window, requests interleaved, the interleave order rotating too.
                    res = measure_quietly(args, f"{sc} (all targets)",
                                          lambda: measure_interleaved(ctx, args, sc, order, start_target),
                                          window_foreign)
                    for t in order:
                        rd[sc][t] = res[t]
                        log_result(f"[round {rnd + 1}/{args.rounds}]", sc, t, res[t])
                    continue
                for t in order:
                    try:
                        rd[sc][t] = measure_quietly(args, f"{sc}/{t}", lambda: measure(ctx, args, t, sc))
                    except Skip as e:
                        rd[sc][t] = {"skipped": str(e)}
                    log_result(f"[round {rnd + 1}/{args.rounds}]", sc, t, rd[sc][t])
            if args.idle_conns:
                ir: dict = {}
                for t in order:
                    try:
                        r = measure_idle(ctx, t, args.idle_conns)
                        ir[t] = r
                        log(f"[round {rnd + 1}/{args.rounds}] idle     {t:8} {r['still_open']:,}/{r['conns']:,} "
                            f"open, RSS {r['rss_before_kib'] / 1024:.1f} -> {r['rss_after_kib'] / 1024:.1f} MiB, "
                            f"{r['bytes_per_conn']:,.0f} B/conn ({r['measured']})")
                    except (Skip, OSError) as e:
                        ir[t] = {"skipped": str(e)}
                        log(f"[round {rnd + 1}/{args.rounds}] idle     {t:8} SKIPPED: {e}")
                idle_rounds.append(ir)
            rounds.append(rd)
    except KeyboardInterrupt:
        log("interrupted: stopping child processes")
        return 130
    finally:
        stop_all()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    out = {"meta": meta, "rounds": rounds}
    print(f"\n## shoal-bench {meta['date_utc']} — {meta['cpus']} CPUs, {args.rounds} round(s) × {args.duration} s, "
          f"medians\n")
    print(f"`{meta['command']}`\n")
    if scenarios:
        summary = summarize(rounds, targets, scenarios)
        out["summary"] = summary
        print(print_table(summary, targets, scenarios))
        print()
        print_scenario_notes(args, scenarios, "paced Python client")
        foreign = [r.get("foreign_cpu1_pct") for rd in rounds for sc, res in rd.items() if sc not in RATE_SCENARIOS
                   for r in res.values() if "skipped" not in r]
        # An interleaved window counts once, not once per target.
        foreign += [window_foreign(rd[sc]) for rd in rounds for sc in RATE_SCENARIOS
                    if sc in rd and any("skipped" not in r for r in rd[sc].values())]
        if foreign:
            print(f"- other load on CPU {SERVER_CPU} during measured windows: median {med(foreign):.0f}%, "
                  f"max {max(foreign):.0f}% of one CPU")
    if args.idle_conns:
        idle_summary = {}
        for t in targets:
            ok = [ir[t] for ir in idle_rounds if t in ir and "skipped" not in ir[t]]
            if not ok:
                reasons = sorted({ir[t]["skipped"].splitlines()[0] for ir in idle_rounds if t in ir})
                idle_summary[t] = {"skipped": "; ".join(reasons) or "not run"}
                continue
            idle_summary[t] = {k: med([r[k] for r in ok]) for k in ok[0] if k != "measured"}
            idle_summary[t]["measured"] = ok[0]["measured"]
        out["idle"] = {"rounds": idle_rounds, "summary": idle_summary}
        print(f"\nIdle keep-alive client connections ({args.idle_conns:,}, one request each, held open):\n")
        print(idle_table(idle_summary, targets))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
