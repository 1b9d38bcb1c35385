#!/usr/bin/env python3
"""Formats one comparison table from the outputs `bench/compare.sh` collects.

Inputs (paths given on the command line):
  --python-json  Python veltix's `python -m veltix.benchmark --save FILE`
  --python-log   the stdout of that same Python run
  --std-json     `veltix bench --driver std --json`
  --tokio-json   `veltix bench --driver tokio --json`
  --out FILE     also write the table (Markdown) to FILE

Python's figures are recomputed so that every rate counts to the time of the
last arrival, as `veltix bench` does:
  * burst receive: count / drain_max_ms, both from Python's JSON (drain_max_ms
    is the time from its first send to its last received timestamp; the
    recv_throughput it prints instead stops at a 50 ms polling tick);
  * stress receive: total_recv / "Last recv at" (ms after its first send),
    which Python prints but does not save, so it is read from --python-log;
  * memory per idle client: Python's "10 -> 50" slope,
    (ram_50_clients_kb - ram_10_clients_kb) / 40, from its JSON.
Python's own printed rates are listed too, marked "(Python's figure)".

The table has one row per scenario/metric; "raw TCP" is the baseline each
driver measured in the same run (blocking std::net / tokio sockets), and the
ratios are veltix-rs / Python. A targets section follows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

MS = 1000.0  # ms -> µs


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def first(value: Any) -> dict[str, Any] | None:
    """Python saves a list per bench (one entry per socket backend)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def stress_last_recv_ms(log: str) -> float | None:
    m = re.search(r"Last recv at\s*:?\s*([\d,.]+)\s*ms", log)
    return float(m.group(1).replace(",", "")) if m else None


def python_figures(py: dict[str, Any], log: str) -> dict[tuple[str, str], float]:
    r = py.get("results", {})
    out: dict[tuple[str, str], float] = {}
    mem = first(r.get("memory"))
    if mem:
        out[("memory", "per_client_bytes")] = (
            (mem["ram_50_clients_kb"] - mem["ram_10_clients_kb"]) / 40 * 1024
        )
        out[("memory", "first10_bytes")] = mem["client_cost_avg_kb"] * 1024
    lat = first(r.get("latency"))
    if lat:
        for ours, theirs in [
            ("min_us", "min_ms"),
            ("p50_us", "p50_ms"),
            ("p95_us", "p95_ms"),
            ("p99_us", "p99_ms"),
            ("mean_us", "avg_ms"),
        ]:
            out[("latency", ours)] = lat[theirs] * MS
    burst = first(r.get("burst"))
    if burst:
        out[("burst", "send_msgs_per_s")] = burst["send_throughput"]
        received = burst["count"] * burst["success_rate"] / 100
        if burst["drain_max_ms"] > 0:
            out[("burst", "recv_msgs_per_s")] = received / (burst["drain_max_ms"] / 1000)
        out[("burst", "python_recv")] = burst["recv_throughput"]
    stress = first(r.get("stress"))
    if stress:
        if stress["send_phase_s"] > 0:
            out[("stress", "send_msgs_per_s")] = stress["total_sent"] / stress["send_phase_s"]
        last = stress_last_recv_ms(log)
        if last:
            out[("stress", "recv_msgs_per_s")] = stress["total_recv"] / (last / 1000)
        out[("stress", "python_recv")] = stress["throughput"]
    return out


ROWS = [
    # scenario, key, label, unit
    ("memory", "per_client_bytes", "RSS per idle client (both ends)", "KiB"),
    ("memory", "first10_bytes", "RSS per client, first 10 (Python's figure)", "KiB"),
    ("latency", "min_us", "ping min", "µs"),
    ("latency", "p50_us", "ping p50", "µs"),
    ("latency", "p90_us", "ping p90", "µs"),
    ("latency", "p95_us", "ping p95", "µs"),
    ("latency", "p99_us", "ping p99", "µs"),
    ("latency", "mean_us", "ping mean", "µs"),
    ("burst", "send_msgs_per_s", "send rate", "/s"),
    ("burst", "recv_msgs_per_s", "receive rate (last arrival)", "/s"),
    ("burst", "python_recv", "receive rate (Python's figure, 50 ms polling)", "/s"),
    ("stress", "send_msgs_per_s", "send phase rate", "/s"),
    ("stress", "recv_msgs_per_s", "receive rate (last arrival)", "/s"),
    ("stress", "python_recv", "receive rate (Python's figure, 50 ms polling)", "/s"),
]


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "KiB":
        return f"{v / 1024:,.1f} KiB"
    if unit == "µs":
        return f"{v:,.1f} µs"
    return f"{v:,.0f}/s"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    return f"{r:,.1f}x" if r >= 10 else f"{r:.2f}x"


def rs(doc: dict[str, Any] | None, scenario: str, key: str, raw: bool = False, prefix: str = "") -> float | None:
    if not doc:
        return None
    v = doc.get(scenario, {}).get(("raw_" if raw else prefix) + key)
    return float(v) if isinstance(v, (int, float)) else None


def table(py: dict[tuple[str, str], float], std: dict | None, tok: dict | None) -> list[str]:
    head = [
        "scenario",
        "metric",
        "Python veltix",
        "veltix-rs std",
        "veltix-rs tokio",
        "raw TCP (std / tokio)",
        "limit (std / tokio)",
        "std / Python",
        "tokio / Python",
        "std / limit",
        "tokio / limit",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario, key, label, unit in ROWS:
        p = py.get((scenario, key))
        s, t = rs(std, scenario, key), rs(tok, scenario, key)
        if p is None and s is None and t is None:
            continue
        rs_, rt = rs(std, scenario, key, raw=True), rs(tok, scenario, key, raw=True)
        raw = "-" if rs_ is None and rt is None else f"{fmt(rs_, unit)} / {fmt(rt, unit)}"
        ls, lt = rs(std, scenario, key, prefix="limit_"), rs(tok, scenario, key, prefix="limit_")
        limit = "-" if ls is None and lt is None else f"{fmt(ls, unit)} / {fmt(lt, unit)}"
        lines.append(
            "| "
            + " | ".join(
                [
                    scenario,
                    label,
                    fmt(p, unit),
                    fmt(s, unit),
                    fmt(t, unit),
                    raw,
                    limit,
                    ratio(s, p),
                    ratio(t, p),
                    ratio(s, ls),
                    ratio(t, lt),
                ]
            )
            + " |"
        )
    return lines


# Large-burst runs (veltix only; Python's burst waits 10 s at most).
BIG: dict[str, dict] = {}


def big_table() -> list[str]:
    lines = []
    for name in ("std_big", "tokio_big"):
        doc = BIG.get(name)
        if not doc:
            continue
        v = rs(doc, "burst", "recv_msgs_per_s")
        l = rs(doc, "burst", "recv_msgs_per_s", prefix="limit_")
        n = (doc.get("meta") or {}).get("count")
        lines.append(
            f"| burst {n} x 64 B, {name.split('_')[0]} | {fmt(v, 'msg/s')} | {fmt(l, 'msg/s')} | {ratio(v, l)} |"
        )
    if lines:
        lines = ["| run | veltix-rs receive | limit | veltix / limit |", "|---|---|---|---|"] + lines
    return lines


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def targets(py: dict[tuple[str, str], float], std: dict | None, tok: dict | None) -> list[str]:
    clients = ((std or tok or {}).get("meta") or {}).get("clients", "?")
    lines = [
        "| target | veltix-rs std | veltix-rs tokio |",
        "|---|---|---|",
    ]

    def at_least(scenario: str, key: str, factor: float, doc: dict | None) -> str:
        p, v = py.get((scenario, key)), rs(doc, scenario, key)
        if p is None or v is None:
            return "n/a"
        return f"{v / p:,.1f}x: {verdict(v / p >= factor)}"

    for scenario, label in [
        ("burst", "burst receive >= 100x Python"),
        ("stress", f"{clients}-client stress receive >= 100x Python"),
    ]:
        lines.append(
            f"| {label} | {at_least(scenario, 'recv_msgs_per_s', 100, std)} | {at_least(scenario, 'recv_msgs_per_s', 100, tok)} |"
        )

    def of_limit(doc: dict | None, scenario: str) -> str:
        v, l = rs(doc, scenario, "recv_msgs_per_s"), rs(doc, scenario, "recv_msgs_per_s", prefix="limit_")
        if v is None or not l:
            return "n/a"
        return f"{100 * v / l:.0f}% of the limit: {verdict(v >= 0.25 * l)}"

    for scenario, label in [
        ("burst", "burst receive >= 25% of the batched raw limit"),
        ("stress", "stress receive >= 25% of the batched raw limit"),
    ]:
        lines.append(f"| {label} | {of_limit(std, scenario)} | {of_limit(tok, scenario)} |")
    for name, s_doc, t_doc in [("1 M-message burst", "std_big", "tokio_big")]:
        lines.append(
            f"| {name} receive >= 25% of the limit | {of_limit(BIG.get(s_doc), 'burst')} | {of_limit(BIG.get(t_doc), 'burst')} |"
        )

    def ping(doc: dict | None) -> str:
        p, v, raw = py.get(("latency", "p50_us")), rs(doc, "latency", "p50_us"), rs(doc, "latency", "p50_us", raw=True)
        if p is None or v is None or raw is None:
            return "n/a"
        ok = v < p and v <= 1.2 * raw
        return f"{v / p:.2f}x Python, {v / raw:.2f}x raw: {verdict(ok)}"

    lines.append(f"| ping p50 < Python and <= 1.2x raw TCP (same driver's sockets) | {ping(std)} | {ping(tok)} |")

    def kib(doc: dict | None) -> str:
        v = rs(doc, "memory", "per_client_bytes")
        return "n/a" if v is None else f"{v / 1024:.1f} KiB: {verdict(v <= 16 * 1024)}"

    lines.append(f"| memory per idle client <= 16 KiB | {kib(std)} | {kib(tok)} |")

    def memory(doc: dict | None) -> str:
        p, v = py.get(("memory", "per_client_bytes")), rs(doc, "memory", "per_client_bytes")
        if p is None or v is None or p <= 0:
            return "n/a"
        return f"{v / p:.2f}x Python: {verdict(v <= p / 4)}"

    lines.append(f"| memory per idle client <= 1/4 Python | {memory(std)} | {memory(tok)} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python-json", required=True)
    ap.add_argument("--python-log", required=True)
    ap.add_argument("--std-json")
    ap.add_argument("--tokio-json")
    ap.add_argument("--std-big-json", help="veltix bench --scenario burst with a large --count (std)")
    ap.add_argument("--tokio-big-json", help="the same on tokio")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.std_big_json:
        BIG["std_big"] = load(a.std_big_json)
    if a.tokio_big_json:
        BIG["tokio_big"] = load(a.tokio_big_json)

    py_doc = load(a.python_json)
    with open(a.python_log, encoding="utf-8", errors="replace") as f:
        py = python_figures(py_doc, f.read())
    std = load(a.std_json) if a.std_json else None
    tok = load(a.tokio_json) if a.tokio_json else None

    system = py_doc.get("system", {})
    meta = (std or tok or {}).get("meta", {})
    intro = [
        f"Python veltix {py_doc.get('veltix_version')} (engine {py_doc.get('engine')}, "
        f"socket core {py_doc.get('harness', {}).get('socket_backend')}), "
        f"Python {system.get('python')}; veltix-rs {meta.get('veltix_rs')}; "
        f"{system.get('cpu_logical')} CPUs ({system.get('cpu_model')}), "
        f"load average at Python's start {system.get('load_avg')}.",
        f"Parameters: latency {meta.get('iterations')} pings; burst {meta.get('count')} x "
        f"{meta.get('payload')} B; stress {meta.get('clients')} clients x {meta.get('msgs')} x "
        f"{meta.get('stress_payload')} B; memory {meta.get('idle')} idle clients after 10; "
        f"{meta.get('warmup')} warm-up pass(es).",
        "",
    ]
    big = big_table()
    out = intro + table(py, std, tok)
    if big:
        out += ["", "Large burst (same run, veltix-rs only):", ""] + big
    out += ["", "Targets (ratios from this one run):", ""] + targets(py, std, tok)
    text = "\n".join(out)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
