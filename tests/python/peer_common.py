"""Shared helpers for the interop peer scripts in this directory (not a script).

* ``emit(event, **fields)`` writes one JSON object per line to the real
  stdout; everything else (veltix's logger, stray prints) goes to stderr, so
  stdout stays machine-readable.
* ``payload(spec)`` / ``make_request(spec)`` build the named test payloads.
  The Rust tests (tests/tests/interop_std.rs) build the very same bytes from
  the same spec names; keep both sides in sync:

    empty   b""
    text    UTF-8 of "hello, veltix \u2713 caf\u00e9"
    bin256  bytes(range(256))
    frame   a whole valid Veltix frame as payload (spec \u00a71.1 worked example)
    mib     1 MiB, byte i = (i * 7 + i // 256) & 0xFF
    json    json.dumps(JSON_OBJ) sent with Request(JSON, json=JSON_OBJ), type 201
    hex:XX  the literal bytes XX

* ``ECHO`` (200) and ``JSON`` (201) are registered here: Python veltix drops
  frames whose type is not a registered ``MessageType`` in its process.
* veltix logs go to stderr, level ``$VELTIX_PY_LOG`` (e.g. WARNING; default CRITICAL).
* ``start_watchdog(seconds)`` hard-exits the process (code 2) when a script
  runs too long; ``stdin_closed()`` returns an Event set at stdin EOF.
"""

from __future__ import annotations

import json
import os
import sys
import threading

_OUT = sys.stdout
sys.stdout = sys.stderr  # only emit() may write to the real stdout
_LOCK = threading.Lock()


def emit(event: str, **fields: object) -> None:
    """Print one JSON line ``{"event": event, ...}`` on stdout and flush."""
    line = json.dumps({"event": event, **fields})
    with _LOCK:
        _OUT.write(line + "\n")
        _OUT.flush()


def quiet_veltix() -> None:
    """Send veltix's log output to stderr (its default stream is stdout), at
    level ``$VELTIX_PY_LOG`` (default CRITICAL: expected errors stay quiet)."""
    from veltix import Logger, LoggerConfig, LogLevel

    level = LogLevel[os.environ.get("VELTIX_PY_LOG", "CRITICAL").upper()]
    Logger(LoggerConfig(stream=sys.stderr, use_colors=False, level=level))


def start_watchdog(seconds: float) -> None:
    """Exit with code 2 if the script is still running after ``seconds``."""

    def fire() -> None:
        emit("watchdog", seconds=seconds)
        os._exit(2)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()


def stdin_closed() -> threading.Event:
    """An Event that is set once stdin reaches EOF (the test dropped our pipe)."""
    ev = threading.Event()

    def reader() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            ev.set()

    threading.Thread(target=reader, daemon=True).start()
    return ev


# Keys are sorted at every level: serde_json's default map (used by the Rust
# side to re-encode what it decoded) iterates in key order.
JSON_OBJ = {
    "ascii": "hello",
    "empty_list": [],
    "empty_obj": {},
    "escapes": 'quote" backslash\\ slash/ nl\n tab\t nul\u0000 us\u001f del\u007f',
    "floats": [0.1, -2.5, 1.0, -0.0, 3.141592653589793],  # math.pi
    "ints": [0, -1, 9007199254740993, -9223372036854775808],
    "nested": {"a": [1, {"b": None}], "f": False, "t": True},
    "unicode": "caf\u00e9 \u2713 \U0001f600 \u20ac \u00ff",
}

FRAME_PAYLOAD = bytes.fromhex("5658" "00" "00c8" "00000005" "3610a686" "0001" "68656c6c6f")


def payload(spec: str) -> bytes:
    """The bytes of a named payload (see the module docstring)."""
    if spec == "empty":
        return b""
    if spec == "text":
        return "hello, veltix \u2713 caf\u00e9".encode()
    if spec == "bin256":
        return bytes(range(256))
    if spec == "frame":
        return FRAME_PAYLOAD
    if spec == "mib":
        return bytes((i * 7 + i // 256) & 0xFF for i in range(1 << 20))
    if spec == "json":
        return json.dumps(JSON_OBJ).encode("utf-8")
    if spec.startswith("hex:"):
        return bytes.fromhex(spec[4:])
    raise ValueError(f"unknown payload spec {spec!r}")


from veltix import MessageType, Request  # noqa: E402

quiet_veltix()

ECHO = MessageType(code=200, name="echo")
JSON = MessageType(code=201, name="json")


def make_request(spec: str, request_id: int | None = None) -> Request:
    """A Request carrying ``payload(spec)`` (type JSON via ``json=`` for "json", else ECHO)."""
    if spec == "json":
        return Request(JSON, json=JSON_OBJ, request_id=request_id)
    return Request(ECHO, content=payload(spec), request_id=request_id)


def describe(resp: object) -> dict:
    """JSON-friendly fields of a received Response: type, id, len and full hex."""
    return {
        "type": resp.type.code,
        "id": resp.request_id,
        "len": len(resp.content),
        "hex": resp.content.hex(),
    }


def answer(resp: object) -> Request:
    """The reply a test peer sends back: same bytes (JSON re-encoded by Python), same id."""
    if resp.type == JSON:
        return Request(JSON, json=resp.json, request_id=resp.request_id)
    return Request(resp.type, content=resp.content, request_id=resp.request_id)
