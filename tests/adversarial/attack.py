#!/usr/bin/env python3
"""Adversarial test suite for `veltix serve` (Python 3 stdlib only, Linux).

Starts `veltix serve --host 127.0.0.1 --port 0 --echo --until-stdin-closes`
(plus `--driver std|tokio` when the binary has that flag), runs each attack
against it while a legitimate client keeps sending PINGs and echo requests,
samples the server's RSS from /proc/<pid>/status every 100 ms, and prints one
line per attack and driver:

    ATTACK <name> <driver> PASS|FAIL rss_peak=<MiB> legit_max=<ms> time=<s> ... -- <reasons>

Exit status: 0 when every attack passed, 1 when one failed, 2 on usage errors.

    python3 tests/adversarial/attack.py --binary target/release/veltix --driver std
    python3 tests/adversarial/attack.py --binary ... --driver std,tokio --only slowloris --quick

Attackers run in child processes (`attack.py --worker KIND ...`), so the
Python GIL of a flooding attacker never delays the legitimate client, whose
latencies are what the pass criteria look at. Everything talks to 127.0.0.1
only, and every attack is bounded in connections, bytes and time. See
README.md next to this file for the attacks, their criteria and bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

# ---------------------------------------------------------------------------
# Protocol (docs: /work/shared/spec/PROTOCOL.md, veltix-proto/src/frame.rs)
# Header, big-endian: magic "VX", flags u8, type u16, payload_len u32,
# crc32 u32 (zlib.crc32 of the payload), request_id u16; then the payload.
# ---------------------------------------------------------------------------

HEADER = struct.Struct(">2sBHIIH")
HEADER_LEN = HEADER.size  # 15
PING, PONG, ECHO = 0, 1, 200
MAX_MESSAGE = 10 * 1024 * 1024  # default max_message_size, header included
MIB = 1024 * 1024
CLIENT_HELLO_BODY = json.dumps({"v": "0.0.0.adversarial", "pv": "1.0", "meta": {}}).encode()
CLIENT_HELLO = struct.pack(">H", len(CLIENT_HELLO_BODY)) + CLIENT_HELLO_BODY
HOST = "127.0.0.1"


def frame(mtype: int, rid: int, payload: bytes = b"", crc: int | None = None) -> bytes:
    c = zlib.crc32(payload) & 0xFFFFFFFF if crc is None else crc
    return HEADER.pack(b"VX", 0, mtype, len(payload), c, rid) + payload


class ProtoError(Exception):
    pass


def recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline")
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtoError("connection closed")
        buf += chunk
    return bytes(buf)


def read_hs(sock: socket.socket, deadline: float) -> dict:
    (n,) = struct.unpack(">H", recv_exact(sock, 2, deadline))
    if n == 0 or n > 30720:
        raise ProtoError(f"bad handshake length {n}")
    obj = json.loads(recv_exact(sock, n, deadline))
    if not isinstance(obj, dict):
        raise ProtoError("handshake message is not an object")
    return obj


def tls_context(cafile: str | None) -> ssl.SSLContext:
    """A client context trusting the server's self-signed certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["veltix/1"])
    return ctx


def connect(port: int, timeout: float = 5.0, rcvbuf: int | None = None,
            tls: ssl.SSLContext | None = None) -> socket.socket:
    """TCP connect (+ TLS with `tls`) + the three-message handshake; returns a blocking socket."""
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(timeout)
        s.connect((HOST, port))
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname="localhost")
        hello = read_hs(s, deadline)
        if "error" in hello:
            raise ProtoError(f"server refused: {hello['error']}")
        s.sendall(CLIENT_HELLO)
        ack = read_hs(s, deadline)
        if ack.get("result") != "ok":
            raise ProtoError(f"bad ack {ack}")
        return s
    except BaseException:
        s.close()
        raise


class FrameReader:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def next(self, deadline: float):
        while True:
            if len(self.buf) >= HEADER_LEN:
                magic, _f, t, n, crc, rid = HEADER.unpack_from(self.buf)
                if magic != b"VX":
                    raise ProtoError("bad magic from server")
                if len(self.buf) >= HEADER_LEN + n:
                    payload = bytes(self.buf[HEADER_LEN:HEADER_LEN + n])
                    del self.buf[:HEADER_LEN + n]
                    if zlib.crc32(payload) & 0xFFFFFFFF != crc:
                        raise ProtoError("bad crc from server")
                    return t, rid, payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("reply deadline")
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ProtoError("connection closed by server")
            self.buf += chunk


# ---------------------------------------------------------------------------
# The legitimate client
# ---------------------------------------------------------------------------

class Legit(threading.Thread):
    """Alternates PING and a 64-byte echo request every `interval` seconds on
    one connection; with `reconnect_every` it also makes a fresh connection
    (handshake timed like a request) that often. Records the latency of every
    probe; a probe without reply within `probe_timeout` counts as a failure
    (and as `probe_timeout` of latency), after which it reconnects."""

    def __init__(self, port: int, reconnect_every: float | None = None,
                 interval: float = 0.05, probe_timeout: float = 3.0,
                 tls: ssl.SSLContext | None = None):
        super().__init__(daemon=True)
        self.port = port
        self.tls = tls
        self.reconnect_every = reconnect_every
        self.interval = interval
        self.probe_timeout = probe_timeout
        self.stop_ev = threading.Event()
        self.lat_ms: list[tuple[float, float]] = []  # (when, ms)
        self.connect_ms: list[tuple[float, float]] = []
        self.failures: list[tuple[float, str]] = []
        self.rid = 0

    def _connect(self):
        t0 = time.monotonic()
        s = connect(self.port, timeout=self.probe_timeout, tls=self.tls)
        self.connect_ms.append((t0, (time.monotonic() - t0) * 1000))
        return s, FrameReader(s), time.monotonic()

    def _probe(self, s, reader, mtype):
        self.rid = (self.rid + 1) % 32768
        rid = self.rid
        payload = random.randbytes(64) if mtype == ECHO else b""
        t0 = time.monotonic()
        s.settimeout(self.probe_timeout)
        s.sendall(frame(mtype, rid, payload))
        deadline = t0 + self.probe_timeout
        want = PONG if mtype == PING else ECHO
        while True:
            t, r, p = reader.next(deadline)
            if r == rid and t == want:
                if mtype == ECHO and p != payload:
                    raise ProtoError("echo payload differs")
                self.lat_ms.append((t0, (time.monotonic() - t0) * 1000))
                return

    def run(self):
        s = reader = None
        since = 0.0
        kinds = (PING, ECHO)
        i = 0
        while not self.stop_ev.is_set():
            try:
                if s is None or (self.reconnect_every and time.monotonic() - since > self.reconnect_every):
                    if s is not None:
                        s.close()
                    s = None
                    s, reader, since = self._connect()
                self._probe(s, reader, kinds[i % 2])
                i += 1
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                what = "ping" if kinds[i % 2] == PING else "echo"
                now = time.monotonic()
                self.failures.append((now, f"{what if s else 'connect'}: {type(e).__name__}: {e}"))
                self.lat_ms.append((now, self.probe_timeout * 1000))
                i += 1
                if s is not None:
                    s.close()
                s = None
                self.stop_ev.wait(0.2)
            self.stop_ev.wait(self.interval)
        if s is not None:
            s.close()

    def stop(self):
        self.stop_ev.set()
        self.join(self.probe_timeout + 6)

    def max_ms(self, until: float = float("inf")) -> float:
        return max((ms for t, ms in self.lat_ms + self.connect_ms if t < until), default=float("nan"))


def legit_once(port: int, timeout: float) -> float:
    """Fresh connection + one echo; returns the seconds it took."""
    t0 = time.monotonic()
    s = connect(port, timeout=timeout)
    try:
        payload = b"after-the-storm"
        s.sendall(frame(ECHO, 7, payload))
        reader = FrameReader(s)
        deadline = t0 + timeout
        while True:
            t, r, p = reader.next(deadline)
            if t == ECHO and r == 7 and p == payload:
                return time.monotonic() - t0
    finally:
        s.close()


# ---------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------

def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Help:
    """What the binary's `serve --help` offers."""

    def __init__(self, binary: str):
        try:
            out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=20)
            self.text = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired) as e:
            sys.exit(f"attack.py: cannot run {binary} serve --help: {e}")
        self.driver = os.environ.get("VELTIX_DRIVER_FLAG") == "1" or "--driver" in self.text
        self.tls_self_signed = "--tls-self-signed" in self.text
        self.write_timeout = "--write-timeout" in self.text
        self.max_workers = "--max-workers" in self.text


class Server:
    def __init__(self, binary: str, driver: str, help_: Help, extra: list[str] = (),
                 nofile: int | None = None, abort_mib: float = 1024):
        self.cmd = [binary, "serve"]
        if help_.driver:
            self.cmd += ["--driver", driver]
        self.cmd += ["--host", HOST, "--port", "0", "--echo", "--until-stdin-closes", *extra]
        self.errf = tempfile.TemporaryFile()
        pre = None
        if nofile:
            def pre():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errf, preexec_fn=pre)
        self.pid = self.proc.pid
        self.port = self._read_port()
        # `--tls-self-signed` names the certificate to trust on line 2.
        m = re.search(rb"--tls-ca (\S+)\)", self._rest)
        self.cafile = m.group(1).decode() if m else None
        self.disconnects = 0
        self.connects = 0
        self.disconnect_times: list[float] = []
        self.samples: list[tuple[float, float]] = []
        self.aborted = False
        self.abort_time = float("inf")
        self.abort_mib = abort_mib
        self._stop = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _read_port(self) -> int:
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + 15
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(left, 0))
            chunk = os.read(fd, 4096) if r else b""
            if not chunk:
                self.proc.kill()
                self.proc.wait()
                self.errf.seek(0)
                raise RuntimeError(f"server did not start: {' '.join(self.cmd)}: "
                                   f"{self.errf.read().decode(errors='replace')[-500:]}")
            buf += chunk
        line, self._rest = buf.split(b"\n", 1)
        m = re.search(rb"listening on .*:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"unexpected first line: {line!r}")
        return int(m.group(1))

    def _drain(self):
        fd = self.proc.stdout.fileno()
        carry = self._rest
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            whole, carry = data[:cut], data[cut:]
            n = whole.count(b" disconnected (")
            if n:
                now = time.monotonic()
                self.disconnects += n
                self.disconnect_times += [now] * n
            self.connects += whole.count(b" connected from ")

    def _sample(self):
        while not self._stop.is_set():
            r = rss_mib(self.pid)
            if r is None or self.proc.poll() is not None:
                break
            self.samples.append((time.monotonic(), r))
            if r > self.abort_mib and not self.aborted:
                self.aborted = True
                self.abort_time = time.monotonic()
                self.proc.kill()
            self._stop.wait(0.1)

    def peak(self, since: float = 0.0) -> float:
        return max((r for t, r in self.samples if t >= since), default=0.0)

    def rss_now(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> float:
        """Close stdin (the server stops), escalate to SIGTERM/SIGKILL; returns seconds."""
        t0 = time.monotonic()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        for sig, wait in ((None, 5), (signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._stop.set()
        return time.monotonic() - t0


class Worker:
    """An attacker child process: `attack.py --worker KIND --port P ...`.
    It prints JSON lines ({"phase": ...}); the parent reads them with a timeout."""

    def __init__(self, kind: str, port: int, **kw):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--port", str(port),
               "--worker-args", json.dumps(kw)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.msgs: list[dict] = []

    def expect(self, phase: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not r:
                break
            line = fd.readline()
            if not line:
                return None
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            self.msgs.append(msg)
            if msg.get("phase") == phase:
                return msg
        return None

    def tell(self, line: str = "go"):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass

    def finish(self, timeout: float = 5.0):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------
# Attack bookkeeping
# ---------------------------------------------------------------------------

RSS_BOUND_MIB = 300  # attacks 1, 2, 8
PARTIAL_BOUND_MIB = 384  # attack 3: 256 MiB receive budget + per-connection overhead
LEGIT_MAX_MS = 1000


class Ctx:
    def __init__(self, args, help_: Help, driver: str):
        self.binary = args.binary
        self.quick = args.quick
        self.help = help_
        self.driver = driver
        self.abort_mib = args.abort_mib

    def dur(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def server(self, extra=(), nofile=None) -> Server:
        return Server(self.binary, self.driver, self.help, list(extra), nofile, self.abort_mib)


class Result:
    def __init__(self, name: str):
        self.name = name
        self.figures: dict[str, str] = {}
        self.problems: list[str] = []
        self.t0 = time.monotonic()

    def fig(self, key, value, fmt="{}"):
        self.figures[key] = fmt.format(value) if value is not None else "n/a"

    def check(self, ok: bool, problem: str):
        if not ok:
            self.problems.append(problem)

    def legit(self, lg: Legit, bound_ms: float = LEGIT_MAX_MS, until: float = float("inf")):
        """Legit-client criteria; `until` (the abort kill) ends the judged window."""
        mx = lg.max_ms(until)
        fails = [m for t, m in lg.failures if t < until]
        self.fig("legit_max", mx, "{:.0f}ms")
        self.fig("legit_probes", sum(t < until for t, _ in lg.lat_ms))
        if not any(t < until for t, _ in lg.lat_ms):
            self.problems.append("legit client made no probe")
        elif mx >= bound_ms:
            self.problems.append(f"legit client max latency {mx:.0f}ms >= {bound_ms:.0f}ms")
        if fails:
            self.problems.append(f"legit client: {len(fails)} failures (first: {fails[0]})")

    def rss(self, srv: Server, bound: float, since: float = 0.0, key="rss_peak"):
        pk = srv.peak(since)
        self.fig(key, pk, "{:.1f}MiB")
        if srv.aborted:
            self.problems.append(f"server RSS passed the abort cap {srv.abort_mib:.0f} MiB; killed")
        elif pk >= bound:
            self.problems.append(f"{key} {pk:.1f}MiB >= bound {bound} MiB")


def session(ctx: Ctx, res: Result, body, extra=(), nofile=None, reconnect_every=None,
            legit_bound=LEGIT_MAX_MS, rss_bound=RSS_BOUND_MIB, tls=False):
    """Server + legit client around `body(srv, res)`; stops both, records figures.
    With `tls`, the server serves TLS only (a self-signed certificate) and the
    legit client speaks TLS, verifying it."""
    if tls:
        extra = [*extra, "--tls-self-signed"]
    srv = ctx.server(extra, nofile)
    lg = Legit(srv.port, reconnect_every=reconnect_every,
               tls=tls_context(srv.cafile) if tls else None)
    lg.start()
    time.sleep(0.3)
    try:
        body(srv, res, lg)
    finally:
        lg.stop()
        alive = srv.alive()
        res.fig("stop", srv.stop(), "{:.1f}s")
        res.rss(srv, rss_bound)
        if not alive and not srv.aborted and "exited" not in res.figures:
            res.problems.append(f"server died during the attack (status {srv.proc.returncode})")
    res.legit(lg, legit_bound, until=srv.abort_time)


# ---------------------------------------------------------------------------
# The attacks (parent side). Each returns a Result.
# ---------------------------------------------------------------------------

def _flood(ctx: Ctx, name: str, mode: str) -> Result:
    res = Result(name)
    d = ctx.dur(10, 4)

    def body(srv, res, lg):
        w = Worker("flood", srv.port, mode=mode, duration=d)
        ready = w.expect("ready", 10)
        res.check(ready is not None, "attacker could not connect")
        done = w.expect("done", d + 15)
        w.finish()
        t_disc = time.monotonic()
        res.fig("sent", (done or {}).get("sent", 0) / MIB, "{:.0f}MiB")
        res.fig("rss_during", srv.peak(), "{:.1f}MiB")
        time.sleep(ctx.dur(3, 2))
        res.fig("rss_after", srv.peak(t_disc + 1.0), "{:.1f}MiB")
        res.fig("rss_end", srv.rss_now(), "{:.1f}MiB")
        res.check(srv.peak(t_disc + 1.0) < RSS_BOUND_MIB, "RSS not bounded after the flooder left")

    session(ctx, res, body)
    return res


def attack_nonreader_echo(ctx):
    """1a. One client sends 1 MiB echo requests as fast as it can and never reads."""
    return _flood(ctx, "nonreader_echo", "echo")


def attack_nonreader_ping(ctx):
    """1b. One client sends PINGs as fast as it can and never reads the PONGs."""
    return _flood(ctx, "nonreader_ping", "ping")


def attack_many_nonreaders(ctx):
    """2. 20 non-readers each queue up to 16 MiB of echo output."""
    res = Result("many_nonreaders")
    wt = 2.0
    extra = []
    if ctx.help.write_timeout:
        extra = ["--write-timeout", _duration_arg(ctx, "--write-timeout", wt)]
    res.fig("write_timeout", f"{wt:.0f}s" if extra else "no-flag")
    d = ctx.dur(8, 5)

    def body(srv, res, lg):
        w = Worker("multi", srv.port, conns=20, per_conn=16 * MIB, duration=d, mode="echo")
        ready = w.expect("ready", 20)
        res.check(ready is not None and ready.get("connected") == 20,
                  f"attackers connected: {(ready or {}).get('connected')}")
        base = srv.disconnects
        sent = w.expect("sent", d + 15)
        t_sent = time.monotonic()
        res.fig("sent", (sent or {}).get("sent", 0) / MIB, "{:.0f}MiB")
        if extra:
            # Every non-reader must be dropped within the write deadline
            # (plus slack) after its output stalled, at the latest once we
            # stopped pushing.
            limit = t_sent + wt + 3.0
            while time.monotonic() < limit and srv.disconnects - base < 20:
                time.sleep(0.1)
            got = srv.disconnects - base
            res.fig("dropped", got)
            if got:
                res.fig("last_drop", srv.disconnect_times[-1] - t_sent, "{:+.1f}s")
            res.check(got >= 20, f"only {got}/20 slow consumers dropped within write_timeout+3s")
        else:
            time.sleep(ctx.dur(3, 2))
            res.fig("dropped", srv.disconnects - base)
        res.fig("fds", fd_count(srv.pid))
        w.finish()

    session(ctx, res, body, extra=extra)
    return res


def _duration_arg(ctx: Ctx, flag: str, secs: float) -> str:
    """`2` or `2s`, whichever the flag's help suggests (value name SECS/MS/DURATION)."""
    m = re.search(re.escape(flag) + r"[ =]<([A-Z_]+)>", ctx.help.text)
    name = m.group(1) if m else ""
    if "MS" in name or "MILLIS" in name:
        return str(int(secs * 1000))
    if "DURATION" in name:
        return f"{secs:g}s"
    return f"{secs:g}"


def attack_partial_frames(ctx):
    """3. 200 clients each send a header plus 9 MiB of a 10 MiB frame, then stall."""
    res = Result("partial_frames")
    d = ctx.dur(12, 8)

    def body(srv, res, lg):
        w = Worker("partial", srv.port, conns=200, duration=d)
        ready = w.expect("ready", 30)
        res.check(ready is not None and ready.get("connected") == 200,
                  f"attackers connected: {(ready or {}).get('connected')}")
        sent = w.expect("sent", d + 15)
        res.fig("sent", (sent or {}).get("sent", 0) / MIB, "{:.0f}MiB")
        res.fig("complete", (sent or {}).get("complete"))
        time.sleep(ctx.dur(3, 2))  # stalled: hold the partial frames
        w.finish()

    session(ctx, res, body, rss_bound=PARTIAL_BOUND_MIB)
    return res


def attack_resync_storm(ctx):
    """4. 10 MiB of junk, then bad-CRC headers at ~100 KB/s."""
    res = Result("resync_storm")
    d = ctx.dur(10, 5)

    def body(srv, res, lg):
        w = Worker("storm", srv.port, duration=d, rate=100_000)
        res.check(w.expect("ready", 10) is not None, "attacker could not connect")
        done = w.expect("done", d + 20)
        res.fig("sent", (done or {}).get("sent", 0) / MIB, "{:.1f}MiB")
        w.finish()

    session(ctx, res, body)
    return res


def attack_fd_exhaustion(ctx):
    """5. Server under RLIMIT_NOFILE=256; ~300 connections; close; recover in 5 s."""
    res = Result("fd_exhaustion")

    def body(srv, res, lg):
        w = Worker("fdx", srv.port, attempts=300)
        ready = w.expect("ready", 60)
        r = ready or {}
        res.fig("opened", r.get("connected"))
        res.fig("hello", r.get("hello"))
        res.fig("server_fds", fd_count(srv.pid))
        w.tell("close")
        closed = w.expect("closed", 10)
        t0 = time.monotonic()
        w.finish()
        res.check(closed is not None, "attacker did not close")
        err = None
        took = None
        while time.monotonic() - t0 < 5.0:
            try:
                legit_once(srv.port, timeout=max(0.2, min(2.0, 5.0 - (time.monotonic() - t0))))
                took = time.monotonic() - t0
                break
            except Exception as e:  # noqa: BLE001
                err = f"{type(e).__name__}: {e}"
                time.sleep(0.1)
        res.fig("recovery", took, "{:.2f}s")
        res.check(took is not None, f"no new client got an echo within 5 s after the close ({err})")
        if took is None and not ctx.quick:  # for the record: does it recover at all (up to 10 s)?
            while time.monotonic() - t0 < 10.0:
                try:
                    legit_once(srv.port, timeout=1.0)
                    res.fig("late_recovery", time.monotonic() - t0, "{:.1f}s")
                    break
                except Exception:  # noqa: BLE001
                    time.sleep(0.2)
            else:
                res.fig("late_recovery", "none-in-10s")

    session(ctx, res, body, nofile=256)
    return res


def attack_callback_starvation(ctx):
    """6. 4 clients flood messages; a 5th client's echo must come back within 1 s."""
    res = Result("callback_starvation")
    extra = ["--max-workers", "4"] if ctx.help.max_workers else []
    d = ctx.dur(10, 5)

    def body(srv, res, lg):
        w = Worker("starve", srv.port, conns=4, duration=d)
        res.check(w.expect("ready", 10) is not None, "attackers could not connect")
        done = w.expect("done", d + 20) or {}
        res.fig("flood_msgs", done.get("sent_msgs"))
        res.fig("flood_replies", done.get("recv_msgs"))
        w.finish()

    session(ctx, res, body, extra=extra)
    return res


def attack_slowloris(ctx):
    """7. 300 connections trickle the client hello at 1 byte/s."""
    res = Result("slowloris")
    d = ctx.dur(10, 8)

    def body(srv, res, lg):
        w = Worker("slowloris", srv.port, conns=300, duration=d)
        res.check(w.expect("ready", 30) is not None, "attackers could not connect")
        done = w.expect("done", d + 20) or {}
        w.finish()
        n, cut = done.get("connected", 0), done.get("cut", 0)
        res.fig("conns", n)
        res.fig("cut", cut)
        res.fig("cut_max", done.get("cut_max"), "{:.1f}s")
        res.check(n == 300, f"only {n}/300 slowloris connections opened")
        res.check(cut == n, f"{n - cut} trickling connections still open after {d:.0f}s")
        res.check((done.get("cut_max") or 0) <= 7.0, "a connection outlived the 5 s handshake deadline by >2 s")

    session(ctx, res, body, reconnect_every=1.0)
    return res


def attack_tls_handshake_stall(ctx):
    """9. TLS server: 300 connections that stall in the TLS handshake (nothing,
    half a ClientHello, a whole ClientHello and never the rest) and 100 that
    send garbage records, while a TLS client keeps working."""
    res = Result("tls_handshake_stall")
    if not ctx.help.tls_self_signed:
        res.problems.append("binary has no --tls-self-signed flag")
        return res
    d = ctx.dur(10, 8)

    def body(srv, res, lg):
        w = Worker("tlsstall", srv.port, conns=300, garbage=100, duration=d)
        res.check(w.expect("ready", 30) is not None, "attackers could not connect")
        done = w.expect("done", d + 20) or {}
        w.finish()
        n, cut = done.get("connected", 0), done.get("cut", 0)
        res.fig("conns", n)
        res.fig("cut", cut)
        res.fig("stall_cut_max", done.get("stall_cut_max"), "{:.1f}s")
        res.fig("garbage_cut_max", done.get("garbage_cut_max"), "{:.2f}s")
        res.check(n == 400, f"only {n}/400 attacking connections opened")
        res.check(cut == n, f"{n - cut} connections still open after {d:.0f}s")
        res.check((done.get("stall_cut_max") or 99) <= 7.0,
                  "a stalled TLS handshake outlived the 5 s handshake deadline by >2 s")
        res.check((done.get("garbage_cut_max") or 99) <= 2.0,
                  "a connection sending garbage records was not cut within 2 s")

    session(ctx, res, body, reconnect_every=1.0, tls=True)
    return res


def attack_shutdown_nonreader(ctx):
    """8. SIGTERM while a non-reading client has a large pending output."""
    res = Result("shutdown_nonreader")
    srv = ctx.server()
    w = Worker("flood", srv.port, mode="echo", duration=30)
    try:
        res.check(w.expect("ready", 10) is not None, "attacker could not connect")
        time.sleep(ctx.dur(4, 3))
        res.fig("rss_before", srv.peak(), "{:.1f}MiB")
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(10)
            res.fig("exited", time.monotonic() - t0, "{:.1f}s")
        except subprocess.TimeoutExpired:
            res.fig("exited", "no")
            res.problems.append("server still running 10 s after SIGTERM")
    finally:
        w.finish(2)
        srv.stop()
    res.rss(srv, RSS_BOUND_MIB)
    if res.figures.get("exited", "no") != "no":
        res.fig("status", srv.proc.returncode)
    return res


def _auth_file() -> str:
    """A throwaway auth file: one SCRAM user (verifier made here with
    hashlib, as `veltix passwd` would) and one token."""
    import base64
    import hashlib
    import hmac as hmac_
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", b"correct horse", salt, 4096)
    client_key = hmac_.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac_.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    fd, path = tempfile.mkstemp(prefix="veltix-adv-auth-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"user alice SCRAM-SHA-256$4096:{b64(salt)}${b64(stored)}:{b64(server)}\n")
        f.write("token bot tok_adversarial_0123456789\n")
    return path


def attack_auth_abuse(ctx):
    """9. Authentication abuse: 200 connections start SCRAM and never answer
    the challenge, while 8 attackers loop wrong passwords, unknown users and
    bad tokens (authentication offered, so the plain legit client is served)."""
    res = Result("auth_abuse")
    d = ctx.dur(10, 8)
    path = _auth_file()

    def body(srv, res, lg):
        st = Worker("scram_stall", srv.port, conns=200, duration=d)
        gs = Worker("auth_guess", srv.port, threads=8, duration=d)
        res.check(st.expect("ready", 30) is not None, "stallers could not connect")
        g = gs.expect("done", d + 30) or {}
        s = st.expect("done", d + 30) or {}
        st.finish()
        gs.finish()
        res.fig("guesses", g.get("attempts"))
        res.fig("accepted", g.get("accepted"))
        res.fig("stalled", s.get("connected"))
        res.fig("cut_max", s.get("cut_max"), "{:.1f}s")
        res.check((g.get("attempts") or 0) > 50, f"only {g.get('attempts')} guesses were answered")
        res.check(g.get("accepted") == 0, f"{g.get('accepted')} wrong credentials were accepted")
        res.check(g.get("other") == 0, f"{g.get('other')} answers were not authentication_failed: {g.get('first_other')}")
        res.check(s.get("cut") == s.get("connected"), f"{(s.get('connected') or 0) - (s.get('cut') or 0)} stalled exchanges still open")
        res.check((s.get("cut_max") or 99) <= 7.0, "a stalled SCRAM exchange outlived the 5 s handshake deadline by >2 s")

    try:
        session(ctx, res, body, extra=["--auth-file", path, "--auth-optional"], reconnect_every=1.0)
    finally:
        os.unlink(path)
    return res


def _hs(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">H", len(body)) + body


def _scram_hello(user: str, nonce: str) -> bytes:
    return _hs({"v": "0.0.0.adversarial", "pv": "1.0", "meta": {"caps": {"rs.auth": {
        "v": 1, "mech": "SCRAM-SHA-256", "first": f"n,,n={user},r={nonce}"}}}})


def worker_scram_stall(port, conns, duration):
    raise_nofile()
    socks, t_conn = {}, {}
    for i in range(conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(3.0)
        try:
            s.connect((HOST, port))
            deadline = time.monotonic() + 3
            read_hs(s, deadline)
            s.sendall(_scram_hello("alice" if i % 2 else f"ghost{i}", f"n{i}x{random.getrandbits(64)}"))
            read_hs(s, deadline)  # the challenge; never answered
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks[s.fileno()] = s
        t_conn[s.fileno()] = time.monotonic()
    n = len(socks)
    say("ready", connected=n)
    cut = []
    end = time.monotonic() + duration
    while socks and time.monotonic() < end:
        for fd in closed_by_server(socks):
            cut.append(time.monotonic() - t_conn[fd])
            socks.pop(fd).close()
    for s in socks.values():
        s.close()
    say("done", connected=n, cut=len(cut), cut_max=max(cut, default=None))


def worker_auth_guess(port, threads, duration):
    counts = {"attempts": 0, "accepted": 0, "other": 0}
    first_other = []
    lock = threading.Lock()
    end = time.monotonic() + duration

    def one(i: int, k: int) -> dict:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(3.0)
        try:
            s.connect((HOST, port))
            deadline = time.monotonic() + 3
            read_hs(s, deadline)
            if k % 3 == 2:
                s.sendall(_hs({"v": "x", "pv": "1.0", "meta": {"caps": {"rs.auth": {
                    "v": 1, "mech": "BEARER", "token": f"tok_guess_{random.getrandbits(64)}"}}}}))
                return read_hs(s, deadline)
            user = "alice" if k % 3 == 0 else f"nobody{i}"
            nonce = f"g{random.getrandbits(64)}"
            s.sendall(_scram_hello(user, nonce))
            ch = read_hs(s, deadline)
            if "auth" not in ch:
                return ch
            r = ch["auth"].split(",")[0][2:]
            proof = __import__("base64").b64encode(os.urandom(32)).decode()
            s.sendall(_hs({"auth": f"c=biws,r={r},p={proof}"}))
            return read_hs(s, deadline)
        finally:
            s.close()

    def loop(i):
        k = 0
        while time.monotonic() < end:
            try:
                ans = one(i, k)
            except Exception as e:  # noqa: BLE001
                ans = {"exception": f"{type(e).__name__}: {e}"}
            k += 1
            with lock:
                counts["attempts"] += 1
                if ans.get("result") == "ok":
                    counts["accepted"] += 1
                elif ans.get("error") != "authentication_failed":
                    counts["other"] += 1
                    if not first_other:
                        first_other.append(ans)

    ts = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(duration + 10)
    say("done", first_other=(first_other or [None])[0], **counts)


ATTACKS = [
    ("nonreader_echo", attack_nonreader_echo),
    ("nonreader_ping", attack_nonreader_ping),
    ("many_nonreaders", attack_many_nonreaders),
    ("partial_frames", attack_partial_frames),
    ("resync_storm", attack_resync_storm),
    ("fd_exhaustion", attack_fd_exhaustion),
    ("callback_starvation", attack_callback_starvation),
    ("slowloris", attack_slowloris),
    ("tls_handshake_stall", attack_tls_handshake_stall),
    ("shutdown_nonreader", attack_shutdown_nonreader),
    ("auth_abuse", attack_auth_abuse),
]


# ---------------------------------------------------------------------------
# Attacker workers (child processes)
# ---------------------------------------------------------------------------

def say(phase: str, **kw):
    sys.stdout.write(json.dumps({"phase": phase, **kw}) + "\n")
    sys.stdout.flush()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def closed_by_server(socks: dict[int, socket.socket], bufsize: int = 4096) -> list[int]:
    """Waits up to 0.1 s for input on `socks` (fd -> non-blocking socket),
    reads and drops what arrived, and returns the fds of those the server
    closed (EOF or an error). They stay in `socks`: the caller records and
    closes them."""
    if not socks:
        return []
    r, _, _ = select.select(list(socks.values()), [], [], 0.1)
    closed = []
    for s in r:
        try:
            data = s.recv(bufsize)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            closed.append(s.fileno())
    return closed


def pump(socks: list[socket.socket], pattern: bytes, limit: int, deadline: float, cycle: bool = True):
    """Non-blocking writes of `pattern` (cycled) to every socket until each has
    sent `limit` bytes, failed, or `deadline` passed. Returns (sent, errors)."""
    mv = memoryview(pattern)
    plen = len(pattern)
    state = {s.fileno(): [s, 0] for s in socks}  # fd -> [sock, sent]
    poller = select.poll()
    for s in socks:
        s.setblocking(False)
        poller.register(s, select.POLLOUT)
    total = errors = 0
    while state and time.monotonic() < deadline:
        for fd, ev in poller.poll(100):
            st = state.get(fd)
            if st is None:
                continue
            s, sent = st
            off = sent % plen if cycle else sent
            n_max = min(limit - sent, plen - off, 1 << 20)
            try:
                n = s.send(mv[off:off + n_max]) if not ev & (select.POLLERR | select.POLLHUP) else -1
            except BlockingIOError:
                continue
            except OSError:
                n = -1
            if n < 0:
                errors += 1
                poller.unregister(fd)
                del state[fd]
                continue
            st[1] += n
            total += n
            if st[1] >= limit:
                poller.unregister(fd)
                del state[fd]
    return total, errors


def worker_flood(port, mode, duration):
    """Connect, then write 1 MiB echo requests (or PINGs) forever, never read."""
    s = connect(port, rcvbuf=4096)
    if mode == "echo":
        pattern = frame(ECHO, 1, bytes(MIB))
    else:
        pattern = b"".join(frame(PING, i) for i in range(4096))
    say("ready")
    sent, err = pump([s], pattern, 1 << 62, time.monotonic() + duration)
    say("done", sent=sent, errors=err)
    # Closing with unread data pending resets the connection: the server sees it at once.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def worker_multi(port, conns, per_conn, duration, mode):
    raise_nofile()
    socks = []
    for _ in range(conns):
        try:
            socks.append(connect(port, rcvbuf=4096))
        except Exception:  # noqa: BLE001
            pass
    say("ready", connected=len(socks))
    pattern = frame(ECHO, 1, bytes(MIB))
    sent, err = pump(socks, pattern, per_conn, time.monotonic() + duration)
    say("sent", sent=sent, errors=err)
    sys.stdin.read()  # hold (never read) until the parent closes our stdin
    for s in socks:
        s.close()


def worker_partial(port, conns, duration):
    raise_nofile()
    socks = []
    for _ in range(conns):
        try:
            socks.append(connect(port, rcvbuf=4096))
        except Exception:  # noqa: BLE001
            pass
    say("ready", connected=len(socks))
    payload_len = MAX_MESSAGE - HEADER_LEN  # a legal, full-size 10 MiB frame
    part = HEADER.pack(b"VX", 0, ECHO, payload_len, 0x12345678, 1) + bytes(9 * MIB)
    sent, err = pump(socks, part, len(part), time.monotonic() + duration, cycle=False)
    say("sent", sent=sent, errors=err, complete=sent // len(part))
    sys.stdin.read()
    for s in socks:
        s.close()


def worker_storm(port, duration, rate):
    """10 MiB of junk made of fake headers, each declaring a max-size frame with
    a bad CRC, then more of them at `rate` bytes/s: once the junk is buffered,
    every 15 bytes that arrive complete one more 10 MiB 'frame' whose CRC fails
    and resync moves one header on (a CPU storm for the receiver)."""
    s = connect(port)
    fake = HEADER.pack(b"VX", 0, ECHO, MAX_MESSAGE - HEADER_LEN, 0x01020304, 0)
    assert fake.count(b"VX") == 1
    junk = fake * (10 * MIB // HEADER_LEN + 1)
    say("ready")
    sent, _ = pump([s], junk, 10 * MIB, time.monotonic() + 5.0, cycle=False)
    end = time.monotonic() + duration
    tick = 0.1
    per_tick = int(rate * tick)
    big = fake * (per_tick // HEADER_LEN + 2)
    while time.monotonic() < end:
        # Byte p of the attack stream is fake[p % 15]: stay aligned on it.
        chunk = big[sent % HEADER_LEN:sent % HEADER_LEN + per_tick]
        t_tick = time.monotonic()
        n, err = pump([s], chunk, len(chunk), min(end, t_tick + tick), cycle=False)
        sent += n
        if err:
            break
        time.sleep(max(0.0, t_tick + tick - time.monotonic()))
    say("done", sent=sent)
    s.close()


def worker_fdx(port, attempts):
    raise_nofile()
    socks = []
    fails = consecutive = 0
    for _ in range(attempts):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect((HOST, port))
            socks.append(s)
            consecutive = 0
        except OSError:
            s.close()
            fails += 1
            consecutive += 1
            if consecutive >= 10:
                break
    hello = closed = 0
    pending = {s.fileno(): s for s in socks}
    deadline = time.monotonic() + 3.0
    while pending and time.monotonic() < deadline:
        r, _, _ = select.select(list(pending.values()), [], [], 0.2)
        for s in r:
            del pending[s.fileno()]
            try:
                data = s.recv(4096, socket.MSG_PEEK)
            except OSError:
                data = b""
            if data:
                hello += 1
            else:
                closed += 1
    say("ready", connected=len(socks), failed=fails, hello=hello, closed=closed)
    sys.stdin.readline()
    for s in socks:
        s.close()
    say("closed")


def worker_starve(port, conns, duration):
    socks = [connect(port) for _ in range(conns)]
    batch_n = 2048
    batch = b"".join(frame(ECHO, i, b"starve-the-pool!") for i in range(batch_n))
    one = len(frame(ECHO, 0, b"starve-the-pool!"))
    end = time.monotonic() + duration
    counts = {"sent": 0, "recv": 0}
    lock = threading.Lock()

    def sender(s):
        s.settimeout(1.0)
        while time.monotonic() < end:
            try:
                s.sendall(batch)
            except socket.timeout:
                continue
            except OSError:
                return
            with lock:
                counts["sent"] += batch_n

    def reader(s):
        s.settimeout(0.5)
        while time.monotonic() < end + 1:
            try:
                data = s.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            with lock:
                counts["recv"] += len(data)

    say("ready")
    ts = [threading.Thread(target=f, args=(s,), daemon=True) for s in socks for f in (sender, reader)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(duration + 3)
    say("done", sent_msgs=counts["sent"], recv_msgs=counts["recv"] // one)
    for s in socks:
        s.close()


def worker_slowloris(port, conns, duration):
    raise_nofile()
    socks = {}
    t_conn = {}
    for _ in range(conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(3.0)  # a full accept backlog drops SYNs: the retry comes after 1 s
        try:
            s.connect((HOST, port))
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks[s.fileno()] = s
        t_conn[s.fileno()] = time.monotonic()
    n = len(socks)
    say("ready", connected=n)
    cut_after = []
    idx = 0
    end = time.monotonic() + duration
    next_byte = time.monotonic()

    def drop(fd):
        cut_after.append(time.monotonic() - t_conn[fd])
        socks.pop(fd).close()

    while socks and time.monotonic() < end:
        if time.monotonic() >= next_byte:
            for fd in list(socks):
                try:
                    socks[fd].send(CLIENT_HELLO[idx % len(CLIENT_HELLO):idx % len(CLIENT_HELLO) + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    drop(fd)
            idx += 1
            next_byte += 1.0
        for fd in closed_by_server(socks):
            drop(fd)
    for s in socks.values():
        s.close()
    say("done", connected=n, cut=len(cut_after), cut_max=max(cut_after, default=None),
        cut_min=min(cut_after, default=None))


def client_hello() -> bytes:
    """A real TLS ClientHello (what Python's ssl sends first)."""
    ctx = tls_context(None)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def worker_tlsstall(port, conns, garbage, duration):
    """`conns` connections stall in the TLS handshake (in turn: nothing, half a
    ClientHello, a whole one and never the rest); `garbage` more send a whole
    record of junk, or plaintext HTTP. Reports when the server cut each kind."""
    raise_nofile()
    hello = client_hello()
    # A whole application-data record before any handshake, or no TLS at all.
    junk = (b"\x17\x03\x03\x08\x00" + random.randbytes(2048), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    socks, t_conn, kind = {}, {}, {}
    for i in range(conns + garbage):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(3.0)
        try:
            s.connect((HOST, port))
            if i >= conns:
                s.sendall(junk[i % 2])
                k = "garbage"
            elif i % 3 == 1:
                s.sendall(hello[: len(hello) // 2])
                k = "stall"
            elif i % 3 == 2:
                s.sendall(hello)
                k = "stall"
            else:
                k = "stall"
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks[s.fileno()] = s
        t_conn[s.fileno()] = time.monotonic()
        kind[s.fileno()] = k
    n = len(socks)
    say("ready", connected=n)
    cut = {"stall": [], "garbage": []}
    end = time.monotonic() + duration
    while socks and time.monotonic() < end:
        # The server's handshake flight and alerts are read and dropped.
        for fd in closed_by_server(socks, bufsize=65536):
            cut[kind[fd]].append(time.monotonic() - t_conn[fd])
            socks.pop(fd).close()
    for s in socks.values():
        s.close()
    say("done", connected=n, cut=len(cut["stall"]) + len(cut["garbage"]),
        stall_cut_max=max(cut["stall"], default=None),
        garbage_cut_max=max(cut["garbage"], default=None))


WORKERS = {
    "flood": worker_flood,
    "multi": worker_multi,
    "partial": worker_partial,
    "storm": worker_storm,
    "fdx": worker_fdx,
    "starve": worker_starve,
    "slowloris": worker_slowloris,
    "scram_stall": worker_scram_stall,
    "auth_guess": worker_auth_guess,
    "tlsstall": worker_tlsstall,
}


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def default_binary() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
    for profile in ("release", "debug"):
        p = os.path.join(target, profile, "veltix")
        if os.path.exists(p):
            return p
    return os.path.join(target, "release", "veltix")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("VELTIX_BIN") or default_binary(),
                    help="path of the veltix binary (default: $VELTIX_BIN, else target/{release,debug}/veltix)")
    ap.add_argument("--driver", default="std", help="std, tokio or std,tokio (default std)")
    ap.add_argument("--only", help="comma-separated attack names (default: all)")
    ap.add_argument("--quick", action="store_true", help="shorter durations (CI)")
    ap.add_argument("--abort-mib", type=float, default=1024,
                    help="kill the server (attack FAILs) if its RSS passes this (default 1024)")
    ap.add_argument("--list", action="store_true", help="list the attacks and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        WORKERS[args.worker](args.port, **json.loads(args.worker_args or "{}"))
        return 0
    if args.list:
        for name, fn in ATTACKS:
            print(f"{name:22} {fn.__doc__.strip()}")
        return 0
    names = [n for n, _ in ATTACKS]
    only = args.only.split(",") if args.only else names
    bad = [n for n in only if n not in names]
    if bad:
        print(f"attack.py: unknown attack(s) {bad}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    if not os.access(args.binary, os.X_OK):
        print(f"attack.py: no veltix binary at {args.binary} (build: cargo build --release -p veltix-cli)",
              file=sys.stderr)
        return 2
    raise_nofile()
    help_ = Help(args.binary)
    drivers = args.driver.split(",")
    print(f"# binary {args.binary}; --driver flag: {'yes' if help_.driver else 'no'}; "
          f"--write-timeout: {'yes' if help_.write_timeout else 'no'}; "
          f"--max-workers: {'yes' if help_.max_workers else 'no'}; quick: {args.quick}", flush=True)
    failed = 0
    t_suite = time.monotonic()
    for driver in drivers:
        t_drv = time.monotonic()
        ctx = Ctx(args, help_, driver)
        for name, fn in ATTACKS:
            if name not in only:
                continue
            if driver != "std" and not help_.driver:
                res = Result(name)
                res.problems.append(f"binary has no --driver flag: cannot serve with {driver}")
            else:
                try:
                    res = fn(ctx)
                except Exception as e:  # noqa: BLE001 - a crash of the harness is a failure too
                    res = Result(name)
                    res.problems.append(f"harness error: {type(e).__name__}: {e}")
            ok = not res.problems
            failed += not ok
            figs = " ".join(f"{k}={v}" for k, v in res.figures.items())
            line = f"ATTACK {name:20} {driver:5} {'PASS' if ok else 'FAIL'} time={time.monotonic() - res.t0:.1f}s {figs}"
            if res.problems:
                line += " -- " + "; ".join(res.problems)
            print(line, flush=True)
        print(f"# driver {driver}: {time.monotonic() - t_drv:.0f}s", flush=True)
    print(f"# suite: {failed} failed, {time.monotonic() - t_suite:.0f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
