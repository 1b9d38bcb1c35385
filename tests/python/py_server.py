"""A real Python veltix 3.3.0 server for the Rust interop tests.

Usage: py_server.py [--port N] [--max-connection N] [--push SPEC ...] [--timeout S]

* Listens on 127.0.0.1 (port 0 = any free port) and prints
  ``{"event": "listening", "port": N}`` first.
* Types ECHO (200) and JSON (201) are routed: every message is reported as
  ``{"event": "recv", "type", "id", "len", "hex"}`` (the full payload in hex)
  and answered with the same id (ECHO: same bytes; JSON: ``json=`` of the
  decoded value, plus ``json_equal`` = whether the received bytes equal
  Python's own ``json.dumps(JSON_OBJ)``).
* ``--push SPEC`` (repeatable): after each client connects, a thread calls
  ``ping_client`` (prints ``{"event": "ping_client", "rtt": float|null}``),
  then ``send_and_wait`` for every SPEC (prints ``{"event": "reply", "spec",
  "sent_id", "type", "id", "len", "hex", "match"}``), then ``push_done``.
* Prints ``connected``/``disconnected`` per client.
* Runs until stdin closes (or ``--timeout`` seconds, exit 2), then closes
  the server, prints ``{"event": "exit", "failures": N}`` and exits 1 if any
  push failed, else 0.

Payload specs are described in peer_common.py.
"""

from __future__ import annotations

import argparse
import sys
import threading

from peer_common import ECHO, JSON, answer, describe, emit, make_request, start_watchdog
from peer_common import payload, stdin_closed

from veltix import Server, ServerConfig


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-connection", type=int, default=-1)
    ap.add_argument("--push", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=25.0)
    args = ap.parse_args()
    start_watchdog(args.timeout)

    failures: list[str] = []
    server = Server(ServerConfig(host="127.0.0.1", port=args.port, max_connection=args.max_connection))

    def push(client: object) -> None:
        rtt = server.ping_client(client, timeout=5.0)
        emit("ping_client", rtt=rtt)
        if not isinstance(rtt, float):
            failures.append("ping_client")
        for spec in args.push:
            req = make_request(spec)
            resp = server.send_and_wait(req, client, timeout=10.0)
            if resp is None:
                emit("no_reply", spec=spec)
                failures.append(spec)
                continue
            ok = resp.content == payload(spec) and resp.request_id == req.request_id
            emit("reply", spec=spec, sent_id=req.request_id, match=ok, **describe(resp))
            if not ok:
                failures.append(spec)
        emit("push_done", ok=not failures)

    @server.on_connect
    def _connected(client: object) -> None:
        emit("connected", addr=list(client.addr))
        if args.push:
            threading.Thread(target=push, args=(client,), daemon=True).start()

    @server.on_disconnect
    def _disconnected(client: object) -> None:
        emit("disconnected", addr=list(client.addr))

    @server.route(ECHO)
    def _echo(client: object, resp: object) -> None:
        emit("recv", **describe(resp))
        server.send(answer(resp), client)

    @server.route(JSON)
    def _json(client: object, resp: object) -> None:
        emit("recv", json_equal=resp.content == payload("json"), **describe(resp))
        server.send(answer(resp), client)

    server.start()
    # Port 0: read the bound port from the listener (veltix keeps it private).
    port = server.socket._sock.getsockname()[1]
    emit("listening", port=port)

    stdin_closed().wait()
    server.close_all()
    emit("exit", failures=len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
