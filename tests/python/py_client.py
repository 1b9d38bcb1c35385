"""A real Python veltix 3.3.0 client for the Rust interop tests.

Usage: py_client.py --port N --scenario NAME [--payload SPEC ...] [--clients N] [--timeout S]

Scenarios (stdout: one JSON object per line; exit 0 only if all went well):

* ``echo``: connect, then ``send_and_wait`` each ``--payload`` SPEC in
  order; prints ``{"event": "reply", "spec", "sent_id", "type", "id",
  "len", "hex", "match"}`` per reply (``match``: bytes and id as sent).
* ``ping``: connect, ``ping_server``; prints ``{"event": "ping", "rtt": float}``.
* ``serve``: connect, print ``connected``, ``ping_server`` (prints
  ``ping``), then answer every ECHO/JSON message (``recv`` with the full
  hex; reply with the same id) until stdin closes; then disconnect, ``done``.
* ``hold``: connect, print ``connected``, wait for stdin to close.
* ``expect_reject``: connect must raise ``ServerFullError``; prints
  ``{"event": "rejected", "reason": str(err)}``.
* ``die``: echo one "text" payload, then ``send`` an 8 MiB frame and
  ``os._exit(0)`` at once (no disconnect): the server sees the connection
  die mid-stream, with a partial frame or a whole one.
* ``many``: ``--clients N`` threads, each its own Client; all connect, meet
  at a barrier (``all_connected``), then each ``send_and_wait`` its own
  payload ``b"client-%02d|" + bytes(range(256))`` and prints ``reply`` with
  ``client`` = its index; all meet again before disconnecting.

Payload specs are described in peer_common.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from peer_common import ECHO, JSON, answer, describe, emit, make_request, payload
from peer_common import start_watchdog, stdin_closed

from veltix import Client, ClientConfig, Request, ServerFullError


def connect(port: int) -> Client:
    client = Client(ClientConfig(server_addr="127.0.0.1", port=port, handshake_timeout=5.0))
    if not client.connect():
        emit("connect_failed")
        raise RuntimeError("connect failed")
    return client


def echo_one(veltix_client: Client, spec: str, **extra: object) -> bool:
    req = make_request(spec)
    resp = veltix_client.send_and_wait(req, timeout=10.0)
    if resp is None:
        emit("no_reply", spec=spec, **extra)
        return False
    ok = resp.content == payload(spec) and resp.request_id == req.request_id
    emit("reply", spec=spec, sent_id=req.request_id, match=ok, **extra, **describe(resp))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--payload", action="append", default=[])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=25.0)
    args = ap.parse_args()
    start_watchdog(args.timeout)
    port = args.port

    if args.scenario == "echo":
        client = connect(port)
        ok = all([echo_one(client, spec) for spec in args.payload])
        client.disconnect()
        return 0 if ok else 1

    if args.scenario == "ping":
        client = connect(port)
        rtt = client.ping_server(timeout=5.0)
        emit("ping", rtt=rtt)
        client.disconnect()
        return 0 if isinstance(rtt, float) else 1

    if args.scenario in ("serve", "hold"):
        closed = stdin_closed()
        client = connect(port)
        if args.scenario == "serve":
            for t in (ECHO, JSON):

                def handler(resp: object) -> None:
                    emit("recv", **describe(resp))
                    client.send(answer(resp))

                client.route(t)(handler)
        emit("connected")
        ok = True
        if args.scenario == "serve":
            rtt = client.ping_server(timeout=5.0)
            emit("ping", rtt=rtt)
            ok = isinstance(rtt, float)
        closed.wait()
        client.disconnect()
        emit("done")
        return 0 if ok else 1

    if args.scenario == "expect_reject":
        client = Client(ClientConfig(server_addr="127.0.0.1", port=port))
        try:
            connected = client.connect()
        except ServerFullError as e:
            emit("rejected", reason=str(e))
            return 0
        emit("not_rejected", connected=connected)
        return 1

    if args.scenario == "die":
        client = connect(port)
        if not echo_one(client, "text"):
            return 1
        client.send(Request(ECHO, content=payload("mib") * 8))
        emit("dying")
        os._exit(0)

    if args.scenario == "many":
        n = args.clients
        barrier = threading.Barrier(n, timeout=15.0)
        results = [False] * n

        def run(i: int) -> None:
            try:
                client = connect(port)
                try:
                    if barrier.wait() == 0:
                        emit("all_connected", clients=n)
                    results[i] = echo_one(client, "hex:" + (b"client-%02d|" % i + bytes(range(256))).hex(), client=i)
                    barrier.wait()
                finally:
                    client.disconnect()
            except Exception as e:  # noqa: BLE001 - reported, makes the exit code non-zero
                emit("client_error", client=i, error=repr(e))
                barrier.abort()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        emit("many_done", ok=sum(results), clients=n)
        return 0 if all(results) else 1

    emit("unknown_scenario", scenario=args.scenario)
    return 1


if __name__ == "__main__":
    try:
        code = main()
    except RuntimeError as e:
        emit("error", error=str(e))
        code = 1
    sys.exit(code)
