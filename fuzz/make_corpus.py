#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ from the golden vectors.

Run from anywhere: `python3 fuzz/make_corpus.py`. It rewrites the named
seeds of every fuzz/corpus/<target>/ folder (deterministically), so that they
always match veltix-proto/tests/vectors.json and the input layouts documented
in veltix-proto/src/fuzz*.rs and fuzz/README.md. Files named by their SHA-1
(inputs fuzz/campaign.sh merged in from libFuzzer's working corpus) are left
alone: after a layout change, delete them by hand (`rm fuzz/corpus/<t>/?????...`)
or let the next campaign's merge replace them.
"""

import json
import random
import re
import struct
import zlib
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
VECTORS = json.loads((FUZZ.parent / "veltix-proto/tests/vectors.json").read_text())
OUT = FUZZ / "corpus"

TARGETS = [
    "frame_decode",
    "frame_roundtrip",
    "frame_chunking",
    "decoder_resync",
    "handshake_client",
    "handshake_server",
    "connection_ops",
    "retry_policy",
    "session_ops",
    "hub_ops",
]
# handshake_auth's seeds (honest exchanges for each flag byte, and mixed
# inputs) are written by hand, not from the vectors: this script leaves
# fuzz/corpus/handshake_auth alone.

written = {t: 0 for t in TARGETS}
SHA1 = re.compile(r"[0-9a-f]{40}")
for t in TARGETS:
    (OUT / t).mkdir(parents=True, exist_ok=True)
    for old in (OUT / t).iterdir():
        if old.is_file() and not SHA1.fullmatch(old.name):
            old.unlink()


def put(target, name, data):
    path = OUT / target / name
    assert not path.exists(), path
    path.write_bytes(bytes(data))
    written[target] += 1


def frame(type_code, request_id, payload=b"", flags=0):
    return (
        b"VX"
        + bytes([flags])
        + struct.pack(">HII", type_code, len(payload), zlib.crc32(payload))
        + struct.pack(">H", request_id)
        + payload
    )


frames = [(f["name"], bytes.fromhex(f["frame_hex"])) for f in VECTORS["frames"] if f["frame_hex"]]
big = next(f for f in VECTORS["frames"] if not f["frame_hex"])
big_frame = bytes.fromhex(big["header_hex"]) + bytes(i % 256 for i in range(big["payload_len"]))
assert big_frame == frame(big["type_code"], big["request_id"], big_frame[15:]), "64 KiB vector"
decode_only = [(f["name"], bytes.fromhex(f["frame_hex"])) for f in VECTORS["decode_only"]]
streams = [
    (s, b"".join(bytes.fromhex(c) for c in s["chunks_hex"])) for s in VECTORS["streams"]
]
split_stream = bytes.fromhex(VECTORS["split_read_check"]["stream_hex"])
hs = {m["name"]: bytes.fromhex(m["hex"]) for m in VECTORS["handshake"]["messages"]}
post = VECTORS["handshake"]["post_handshake_examples"]
ping = bytes.fromhex(post["server_replies_pong"]["client_sends_ping_hex"])
reactions = VECTORS["handshake"]["server_reactions_to_client_hello"]


def padded_hello(length):
    """A client hello padded with JSON whitespace to `length` body bytes."""
    body = b'{"v": "3.3.0", "pv": "1.0", "meta": {}}'
    body = body + b" " * (length - len(body))
    return struct.pack(">H", length) + body


def client_hellos():
    for r in reactions:
        if r["client_sends_hex"] is not None:
            yield r["name"], bytes.fromhex(r["client_sends_hex"])
        elif r["name"] == "length_30720_max":
            yield r["name"], padded_hello(30720)


# ---------------------------------------------------------------- frame_decode
# 4 bytes: flags (bit 0 strict, bit 1 type filter, bits 2-3 max_message_size
# class, bits 4-5 max_buffer_size class, bits 6-7 push mode), cut style, a, b;
# then the stream.

def decode_prefix(s, strict=False, style=3, mode=0):
    flags = (1 if strict else 0) | (mode << 6)
    if s is not None:
        flags |= 2  # the vectors' receiver registers only its type codes
        flags |= {1024: 1}.get(s["max_message_size"], 0) << 2
        flags |= {50: 1}.get(s["max_buffer_size"], 0) << 4
    # a, b = 0x00, 0xc8: the extra accepted type is 200, already registered.
    return bytes([flags, style, 0x00, 0xC8])


for i, (s, data) in enumerate(streams):
    put("frame_decode", f"stream-{s['name']}", decode_prefix(s) + data)
    if i % 2 == 0:
        put("frame_decode", f"stream-{s['name']}-strict-bytewise",
            decode_prefix(s, strict=True, style=0, mode=1) + data)
# (frame_roundtrip has every frame; a few suffice here)
for name, data in frames[:6] + decode_only:
    put("frame_decode", f"frame-{name}", decode_prefix(None) + data)
for style, mode in [(0, 0), (1, 1), (2, 2), (4, 3)]:
    put("frame_decode", f"split_read_check-{style}-{mode}",
        decode_prefix(None, style=style, mode=mode) + split_stream)

# ------------------------------------------------------------- frame_roundtrip
# Raw bytes (decoded with the default config), read again as Unstructured.
for name, data in frames + decode_only:
    put("frame_roundtrip", name, data)
put("frame_roundtrip", "split_read_check", split_stream)
put("frame_roundtrip", big["name"], big_frame)

# -------------------------------------------------------------- frame_chunking
# Raw bytes: the frames they decode to make the stream; then Unstructured.
for s, data in streams:
    put("frame_chunking", s["name"], data)
put("frame_chunking", "split_read_check", split_stream)
put("frame_chunking", "all_frames", b"".join(d for _, d in frames))

# -------------------------------------------------------------- decoder_resync
# 4 bytes: p0 bits 0-1 max_message_size (64, 256, 1024, 4096), bits 2-3 drain
# mode, bit 4 push_bytes now and then; p1 % 9 resync_budget_factor; p2 & 7
# resync_budget_burst class (0, max/2, max-16, max, 4 max, 40 MiB, 15 x (p2 >> 3),
# 40 MiB); p3 cut style. Then ops of two bytes, op (low 3 bits) and arg:
R_HONEST, R_HEADER, R_ATTACK, R_MAGIC, R_HUGE, R_RAW, R_BADFRAME, R_ZEROS = range(8)


def honest(arg, fill):
    return [R_HONEST, arg, fill]


def raw(data):
    assert len(data) < 32
    return [R_RAW, len(data)] + list(data)


resync_seeds = {
    # The attack of issue 10 at 4 KiB: 320 headers exhaust the default factor.
    "attack-4k-exhausts-default-factor": [3, 8, 5, 0] + [R_ATTACK, 63] * 5 + honest(40, 0x61),
    # Four such headers are paid for, and the honest frame among them comes through.
    "attack-4k-then-honest": [3, 8, 5, 3] + [R_ATTACK, 3] + honest(40, 0x61) + [R_ZEROS, 63] * 5,
    # The same against a burst of one max_message_size: the decoder gives up.
    "attack-256-small-burst": [1, 8, 3, 3] + [R_ATTACK, 63] * 4 + honest(10, 0x62),
    "honest-after-garbage": [2, 8, 4, 1] + raw(b"0123456789") + honest(5, 0x41)
    + [R_MAGIC, 20] + honest(7, 0x42) + [R_HUGE | 8, 0] + honest(9, 0x43) + [R_ZEROS, 3] + honest(1, 0x44),
    "zero-budget": [0, 0, 0, 2] + [R_BADFRAME, 3] + honest(2, 0x31) + [R_HEADER, 0] + [R_ZEROS, 4] + honest(3, 0x32),
    "limit-hit-30-byte-burst": [1, 1, 6 | (2 << 3), 5] + [R_HEADER, 0] + [R_ZEROS, 20] + honest(4, 0x33),
    "magic-runs": [2, 8, 4, 1] + [R_MAGIC | 8, 63] + [R_MAGIC, 63] + honest(12, 0x34) + [R_HEADER | 0x80, 50],
    "drain-at-end-bytewise": [3 | (3 << 2), 4, 4, 1] + [R_HEADER, 1] + honest(30, 0x35) + [R_ATTACK, 10]
    + honest(3, 0x36) + [R_ZEROS, 63] * 5,
    "empty-payload-bad-crcs": [0, 8, 1, 2] + [R_HEADER | 0xC0, 0] * 10 + honest(0, 0),
    "push-bytes-mixed": [2 | 0x10 | (1 << 2), 2, 2, 5] + [R_BADFRAME, 200] + honest(100, 0x37) + [R_HUGE, 7]
    + raw(b"VVXX") + honest(50, 0x38),
}
for name, data in resync_seeds.items():
    put("decoder_resync", name, bytes(data))

# ------------------------------------------------------------ handshake_client
# 4 bytes: flags (bit 0 structured, bit 1 strict, bit 2 EOF at the end,
# bits 3-4 timer order), timeout (x 40 ms), cut style, time style; then the
# server's bytes verbatim (raw mode).

def hs_prefix(flags=0, timeout=125, style=3, time=0):
    return bytes([flags, timeout, style, time])


server_ok = hs["server_hello"] + hs["ack_ok"]
client_inputs = [
    ("ok", server_ok),
    ("ok-then-ping", server_ok + ping),
    ("ok-then-frames", server_ok + split_stream),
    ("server_full", hs["error_server_full"]),
    ("hello-then-server_full", hs["server_hello"] + hs["error_server_full"]),
    ("hello-only", hs["server_hello"]),
]
for name, r in client_hellos():
    # The client checks the server's hello with the same rules.
    client_inputs.append((f"server-hello-{name}", r + hs["ack_ok"]))
for name, data in client_inputs:
    put("handshake_client", f"raw-{name}", hs_prefix() + data)
for i, (flags, style, time) in enumerate([(0x04, 0, 1), (0x08, 1, 2), (0x12, 4, 3), (0x18, 2, 7)]):
    put("handshake_client", f"raw-ok-variant{i}", hs_prefix(flags, 125, style, time) + server_ok + ping)
rng = random.Random(1)
for i in range(4):
    put("handshake_client", f"structured-{i}",
        hs_prefix(1 | (i << 3), 125, i, i) + bytes(rng.randrange(256) for _ in range(160)))

# ------------------------------------------------------------ handshake_server
for name, data in client_hellos():
    put("handshake_server", f"raw-{name}", hs_prefix() + data)
put("handshake_server", "raw-standard-then-ping", hs_prefix() + hs["client_hello"] + ping)
for i, (flags, style, time) in enumerate([(0x04, 0, 1), (0x08, 1, 2), (0x12, 4, 3), (0x18, 2, 7)]):
    put("handshake_server", f"raw-standard-variant{i}",
        hs_prefix(flags, 125, style, time) + hs["client_hello"] + ping)
for i in range(4):
    put("handshake_server", f"structured-{i}",
        hs_prefix(1 | (i << 3), 125, i, i) + bytes(rng.randrange(256) for _ in range(160)))

# -------------------------------------------------------------- connection_ops
# 4 bytes: client settings, server settings, handshake timeout ((b+1) x 50 ms),
# bit 0: deliver everything first. Then ops: one byte (0x80 = server side,
# low nibble = op) and its arguments.
SEND, SEND_ID, REQ, REQ_ID, REPLY, PING, CANCEL, CLOSE = range(8)
ADV, DELIVER, JUNK, EOF, TERR, PUMP, ENC, NEXT_DEADLINE = range(8, 16)
S = 0x80
STALL = PUMP | 0x10  # stop (or resume) taking that side's output
TY = {0: 0, 1: 1, 200: 2, 201: 3, 300: 4, 4321: 5, 9999: 6, 65535: 7}


def pl(n=5, fill=0x61):
    """Payload bytes: length byte (< 200: length x 4), fill byte."""
    assert n < 50
    return [n * 4, fill]


def ops(*items):
    out = []
    for it in items:
        out.extend(it if isinstance(it, (list, tuple)) else [it])
    return bytes(out)


def junk(data):
    assert len(data) < 64
    return [JUNK, len(data)] + list(data)


def sjunk(data):
    return [JUNK | S, len(data)] + list(data)


scripts = {
    "request-reply": (
        [0, 0, 99, 1],
        ops([REQ, TY[200]] + pl() + [50], PUMP, [REPLY | S, 0, TY[201]] + pl(3), PUMP, ADV, 200),
    ),
    "ping-both-ways": ([0, 0, 99, 1], ops([PING, 10], [PING | S, 10], PUMP, [ADV, 10], PUMP)),
    "request-timeout": (
        [0, 0, 99, 1],
        ops([REQ, TY[200]] + pl() + [5], [ADV, 20], NEXT_DEADLINE, PUMP, [ADV, 255]),
    ),
    "server-request-window-1": (
        [0, 0x20, 99, 1],
        ops([REQ | S, TY[300]] + pl() + [100], [REQ | S, TY[300]] + pl() + [100], [PING | S, 10],
            PUMP, [REPLY, 0, TY[200]] + pl(), PUMP, [CANCEL | S, 0, 0]),
    ),
    "golden-ping-injected": ([0, 0, 99, 1], ops(sjunk(ping), [DELIVER | S, 0], PUMP)),
    "golden-frames-injected": (
        [0, 0, 99, 1],
        ops(junk(frames[1][1]), sjunk(frames[0][1]), sjunk(b"junkVX"), PUMP),
    ),
    "strict-junk": ([0x10, 0x10, 99, 1], ops([REQ, TY[200]] + pl() + [50], sjunk(b"\x00garbage, not a frame"), PUMP)),
    "handshake-bytewise": (
        [0, 0, 99, 0],
        ops(*([[DELIVER, 1]] * 41), *([[DELIVER | S, 1]] * 41), *([[DELIVER, 1]] * 18), [SEND, TY[200]] + pl(), PUMP),
    ),
    "handshake-timeout": ([0, 0, 3, 0], ops([DELIVER, 10], [ADV, 30], NEXT_DEADLINE, PUMP)),
    "queue-full-pong-dropped": (
        [0, 0x01, 99, 1],
        ops(STALL | S, [SEND | S, TY[200], 210, 0x41], [SEND | S, TY[200], 210, 0x41], [PING, 100],
            PUMP, STALL | S, PUMP),
    ),
    "graceful-close": ([0, 0, 99, 1], ops([REQ, TY[200]] + pl() + [50], CLOSE | 0x10, PUMP)),
    "eof-and-reset": ([0, 0, 99, 1], ops([PING, 50], [EOF | S], [REQ, TY[200]] + pl() + [50], [TERR], PUMP)),
    "big-payloads-small-limit": (
        [0x08, 0x04, 99, 1],
        ops([SEND, TY[200], 215, 0x00], [ENC | S, TY[201], 0x80, 0x00, 212, 0x80], PUMP),
    ),
    "type-filter": ([0x80, 0x80, 99, 1], ops([SEND, TY[4321]] + pl(), [REQ, TY[9999]] + pl() + [50], PUMP, NEXT_DEADLINE)),
}
for name, (prefix, script) in scripts.items():
    put("connection_ops", name, bytes(prefix) + script)

# ---------------------------------------------------------------- retry_policy
# retries class (+ arg), delay (class + args), shape (0 fixed, 1 with_backoff,
# 2 through ClientConfig), [factor, max_delay, jitter], seed (u64 LE), then
# ops: 0-4 failure + reason, 5 success, 6 stop + reason, 7 restart + max.
FAIL, OK, STOP, RESTART = 0, 5, 6, 7
SPECIAL = {"nan": 0, "inf": 1, "-inf": 2, "-1": 3, "0": 4, "-0": 5, "0.5": 6, "1": 7,
           "1.5": 8, "2": 9, "10": 10, "tiny": 11, "huge": 12, "eps": 13, "max": 14}


def ms(n):
    assert n % 10 == 0 and n // 10 < 256
    return [1, n // 10]


def fl(name):
    return [SPECIAL[name]]


def seed(n):
    return list(struct.pack("<Q", n))


veltix_fails = [FAIL, 1] * 4  # Error, as a refused connect
retry_seeds = {
    "veltix-fixed-2x200ms": [1, 1] + ms(200) + [0] + seed(42) + veltix_fails,
    "no-retry": [0] + ms(1000) + [0] + seed(1) + [FAIL, 0, OK, FAIL, 3, RESTART, 3] + veltix_fails,
    "backoff-2x-500ms-jitter-half": (
        [1, 4] + ms(100) + [1] + fl("2") + ms(500) + fl("0.5") + seed(7)
        + veltix_fails * 2 + [OK] + veltix_fails + [STOP, 0, FAIL, 0, RESTART, 0] + veltix_fails
    ),
    "config-backoff": [1, 3] + ms(100) + [2] + fl("1.5") + ms(2000) + fl("0.5") + seed(9) + veltix_fails * 2,
    "rejected-first": [1, 4] + ms(100) + [0] + seed(3) + [FAIL, 3, FAIL, 3, OK, FAIL, 0, FAIL, 3],
    "nan-factor-inf-jitter": [1, 4] + ms(100) + [1] + fl("nan") + ms(500) + fl("inf") + seed(5) + veltix_fails * 2,
    "negative-factor-and-jitter": [1, 4] + ms(100) + [1] + fl("-1") + ms(500) + fl("-1") + seed(5) + veltix_fails * 2,
    "huge-factor-max-cap": [3] + ms(100) + [1] + fl("max") + [4] + fl("1") + seed(5) + veltix_fails * 8,
    "fixed-duration-max": [3, 4, 0] + seed(0) + veltix_fails * 3,
    "restart-budgets": [0] + ms(100) + [0] + seed(0) + [RESTART, 0, FAIL, 0, RESTART, 255, 1, 0, 0, 0] + veltix_fails,
}
for name, data in retry_seeds.items():
    put("retry_policy", name, bytes(data))

# ----------------------------------------------------------------- session_ops
# retries (% 5), delay (x10 ms), settings byte; then ops (see veltix_proto::fuzz::session_ops):
S_CONNECT, S_RETRY, S_STOP, S_DISCONNECT, S_DIAL_OK, S_DIAL_FAIL = 0, 1, 2, 3, 4, 5
S_TO_CLIENT, S_TO_SERVER, S_RESET, S_EOF, S_JUNK, S_CMD, S_SERVER = 6, 7, 8, 9, 10, 11, 12
S_ADVANCE, S_JUMP, S_EOF_AFTER = 13, 14, 15
S_HANDSHAKE = [S_DIAL_OK, 1, S_TO_CLIENT, 0, S_TO_SERVER, 0, S_TO_CLIENT, 0]
S_REQUEST, S_PING = 0x45, 0x85
session_seeds = {
    "talk-then-reset-then-reconnect": [2, 30, 0] + S_HANDSHAKE
    + [S_CMD, S_REQUEST, S_CMD, S_PING, S_CMD, 7, S_TO_SERVER, 0, S_SERVER, 7, S_TO_CLIENT, 0]
    + [S_RESET, S_JUMP] + S_HANDSHAKE + [S_CMD, 10, S_ADVANCE, 200],
    "rejected-on-first-connect": [3, 10, 0, S_DIAL_OK, 0, S_TO_CLIENT, 0, S_JUMP, S_ADVANCE, 255],
    "refused-until-give-up-then-retry": [2, 20, 0, S_DIAL_FAIL, S_JUMP, S_DIAL_FAIL, S_JUMP, S_DIAL_FAIL,
                                         S_RETRY, 2, S_JUMP, S_DIAL_FAIL, S_JUMP, S_DIAL_OK, 1, S_JUMP, S_JUMP],
    "disconnect-with-requests": [1, 10, 1] + S_HANDSHAKE + [S_CMD, S_REQUEST, S_CMD, 0x30, S_DISCONNECT, S_ADVANCE, 100],
    "stop-retry-while-open": [4, 50, 0] + S_HANDSHAKE + [S_STOP, S_EOF, S_JUMP, S_RETRY, 0x80, S_JUMP],
    "server-closes-gracefully": [2, 10, 2] + S_HANDSHAKE + [S_SERVER, 0x85, S_TO_CLIENT, 0, S_EOF_AFTER, S_JUMP],
    "reset-before-and-after-hello": [3, 10, 0, S_DIAL_OK, 1, S_RESET, S_DIAL_OK, 1, S_TO_CLIENT, 0, S_RESET,
                                     S_JUMP, S_DIAL_OK, 1, S_TO_CLIENT, 7, S_TO_CLIENT, 0, S_TO_SERVER, 0, S_JUMP, S_JUMP],
    "junk-and-handshake-timeout": [1, 5, 3, S_DIAL_OK, 1, S_JUNK, 4, 0x56, 0x58, 0, 1, S_TO_CLIENT, 0, S_JUMP, S_JUMP],
}
for name, data in session_seeds.items():
    put("session_ops", name, bytes(data))

# --------------------------------------------------------------------- hub_ops
# max_connection (% 6, 0 unlimited), settings byte, receive budget (x256, 0: 64 KiB);
# then ops of two bytes, code and arg (see veltix_proto::fuzz::hub_ops):
H_ACCEPT, H_TO_HUB, H_TO_CLIENT, H_CLIENT, H_HUB, H_BCAST, H_RESET, H_EOF = 0, 1, 2, 3, 4, 5, 6, 7
H_CLOSE, H_CLOSE_ALL, H_ADVANCE, H_JUMP, H_TAG, H_JUNK, H_PEER_TIMEOUT, H_CLIENT_CLOSE = 8, 9, 10, 11, 12, 13, 14, 15


def h_handshake(i):
    return [H_TO_CLIENT, i, H_TO_HUB, i, H_TO_CLIENT, i]


hub_seeds = {
    "three-peers-tags-broadcasts": [3, 0, 0] + [H_ACCEPT, 0] * 4 + h_handshake(0) + h_handshake(1) + h_handshake(2)
    + [H_TAG, 0, 0x1C, 1, H_TAG, 2, H_BCAST, 0, 0x15, 1, 0x25, 3, 0x35, 0, 0x35, 1]
    + [H_TO_CLIENT, 0, H_TO_CLIENT, 1, H_TO_CLIENT, 2],
    "requests-and-pings": [0, 0, 0, H_ACCEPT, 0] + h_handshake(0)
    + [0x64, 10, 0xA4, 10, H_TO_CLIENT, 0, H_TO_HUB, 0, 0x64, 50, H_JUMP, 0, H_TO_CLIENT, 0],
    "reset-releases-admission": [1, 0, 0, H_ACCEPT, 0] + h_handshake(0) + [H_ACCEPT, 0, H_RESET, 0, H_ACCEPT, 0]
    + h_handshake(1) + [0x04, 5, H_TO_CLIENT, 1],
    "receive-budget": [0, 0, 4, H_ACCEPT, 0, H_ACCEPT, 0] + h_handshake(0) + h_handshake(1)
    + [H_CLIENT, 200, H_CLIENT, 200, H_CLIENT, 200, H_CLIENT, 200, 0x31, 0, 0x41, 1, 0x31, 0, 0x31, 1],
    "close-one-and-all": [0, 1, 0, H_ACCEPT, 0, H_ACCEPT, 0] + h_handshake(0)
    + [0x04, 100, H_CLOSE, 0, H_TO_CLIENT, 0, 0x19, 0, H_ADVANCE, 255],
    "client-requests-and-timeouts": [2, 2, 0, H_ACCEPT, 0] + h_handshake(0)
    + [0x13, 7, H_TO_HUB, 0, 0xD4, 0, H_TO_CLIENT, 0, H_PEER_TIMEOUT, 0, H_CLIENT_CLOSE, 0, H_TO_HUB, 0, H_EOF, 0],
    "handshake-timeout-and-junk": [0, 0, 0, H_ACCEPT, 0, H_JUNK, 5, 0x56, 0x58, 0, 1, 2, H_TO_HUB, 0, H_JUMP, 0],
}
for name, data in hub_seeds.items():
    put("hub_ops", name, bytes(data))

total = sum(written.values())
size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file() and not SHA1.fullmatch(p.name))
for t in TARGETS:
    print(f"{t:18} {written[t]:4} files")
print(f"{'total':18} {total:4} seed files, {size} bytes")
assert total < 200 and size < 1 << 20, "keep the seed corpus small"
