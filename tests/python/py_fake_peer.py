"""FAKE Veltix peers on raw sockets for the Rust interop tests.

This is NOT the veltix library: the handshake bytes are written by hand
(u16 big-endian length + ``json.dumps(obj, ensure_ascii=False)``, exactly as
veltix 3.3.0 does, PROTOCOL.md section 3), so a test can send what real veltix never
would (another protocol major, half a frame). Frames themselves are built with
veltix's own ``Request.compile()``.

Usage: py_fake_peer.py MODE [--port N] [--pv PV] [--close close|reset] [--timeout S]

* ``client --port N --pv PV``: read the server hello (prints ``server_hello``
  with its hex and parsed JSON), send a client hello with ``"pv": PV``, then
  read what comes back until EOF, a complete handshake message, or 3 s
  (prints ``{"event": "after_hello", "hex", "eof"}``).
* ``server --pv PV``: listen on 127.0.0.1:0 (prints ``listening``), accept one
  connection, send a server hello with ``"pv": PV``, then read what the
  client sends until EOF or 3 s (prints ``{"event": "client_sent", "hex", "eof"}``).
* ``partial --port N --close close|reset``: full pv "1.0" handshake, one
  ECHO frame (id 7, ``b"before-partial"``) whose reply frame is printed
  (``{"event": "echo", "hex", "expected_hex"}``: the bytes Python's own
  ``Request.compile()`` makes for that reply), then a header announcing 1000
  payload bytes followed by only 500 of them (``partial_sent``), then a
  normal close (FIN) or an abortive one (RST via SO_LINGER 0).

Exits non-zero only when the fake itself fails (refused, malformed hello).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

from peer_common import ECHO, emit, start_watchdog

from veltix import Request


def hello_bytes(obj: dict) -> bytes:
    body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    return struct.pack(">H", len(body)) + body


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_message(sock: socket.socket) -> bytes:
    """One length-prefixed handshake message, prefix included."""
    head = recv_exact(sock, 2)
    return head + recv_exact(sock, struct.unpack(">H", head)[0])


def read_reply(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Bytes until EOF (True), one complete handshake message, or the deadline."""
    deadline = time.monotonic() + seconds
    got = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
        if len(got) >= 2 and len(got) >= 2 + struct.unpack(">H", got[:2])[0]:
            break
    return got, False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["client", "server", "partial"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--pv", default="1.0")
    ap.add_argument("--close", choices=["close", "reset"], default="close")
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    start_watchdog(args.timeout)

    if args.mode == "server":
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10.0)
        emit("listening", port=listener.getsockname()[1])
        conn, _ = listener.accept()
        conn.sendall(hello_bytes({"v": "3.3.0", "pv": args.pv, "meta": {}}))
        got, eof = read_reply(conn, 3.0)
        emit("client_sent", hex=got.hex(), eof=eof)
        conn.close()
        return 0

    sock = socket.create_connection(("127.0.0.1", args.port), timeout=5.0)
    server_hello = read_message(sock)
    emit("server_hello", hex=server_hello.hex(), json=json.loads(server_hello[2:]))

    if args.mode == "client":
        sock.sendall(hello_bytes({"v": "3.3.0", "pv": args.pv, "meta": {}}))
        got, eof = read_reply(sock, 3.0)
        emit("after_hello", hex=got.hex(), eof=eof)
        sock.close()
        return 0

    # partial
    sock.sendall(hello_bytes({"v": "3.3.0", "pv": "1.0", "meta": {}}))
    ack = read_message(sock)
    if json.loads(ack[2:]) != {"result": "ok"}:
        emit("bad_ack", hex=ack.hex())
        return 1
    sock.sendall(Request(ECHO, content=b"before-partial", request_id=7).compile())
    head = recv_exact(sock, 15)
    reply = head + recv_exact(sock, struct.unpack(">I", head[5:9])[0])
    expected = Request(ECHO, content=b"before-partial", request_id=7).compile()
    emit("echo", hex=reply.hex(), expected_hex=expected.hex())
    whole = Request(ECHO, content=bytes(1000), request_id=8).compile()
    sock.sendall(whole[: 15 + 500])
    emit("partial_sent", sent=15 + 500, announced=len(whole))
    time.sleep(0.2)
    if args.close == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    emit("closed", how=args.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
