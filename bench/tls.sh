#!/usr/bin/env bash
# TLS beside plaintext: `veltix bench --tls` (latency, burst, stress; TLS and
# plaintext in the same run), RUNS runs per driver, then the TLS cost of each
# figure per run and its spread. Results: PERFORMANCE.md, "TLS".
#
# Usage: bench/tls.sh [RUNS]    (default 3; builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
cargo build --release --locked -p veltix-cli >&2
BIN="${CARGO_TARGET_DIR:-target}/release/veltix"
OUT="$(mktemp -d)"
for driver in std tokio; do
  for run in $(seq 1 "$RUNS"); do
    for s in latency burst stress; do
      echo "==> $driver run $run: $s" >&2
      "$BIN" bench --driver "$driver" --scenario "$s" --tls --json >"$OUT/$driver-$run-$s.json"
    done
  done
done
python3 - "$OUT" "$RUNS" <<'PY'
import json, sys, os
out, runs = sys.argv[1], int(sys.argv[2])
rows = [("latency", "p50_us", "ping p50 (µs)", False), ("latency", "p99_us", "ping p99 (µs)", False),
        ("burst", "send_msgs_per_s", "burst send (msg/s)", True), ("burst", "recv_msgs_per_s", "burst receive (msg/s)", True),
        ("stress", "send_msgs_per_s", "stress send phase (msg/s)", True), ("stress", "recv_msgs_per_s", "stress receive (msg/s)", True)]
print("| driver | metric | plaintext (runs) | TLS (runs) | TLS cost per run | cost min–max |")
print("|---|---|---|---|---|---|")
for driver in ("std", "tokio"):
    for s, key, label, rate in rows:
        plain, tls, cost = [], [], []
        for run in range(1, runs + 1):
            d = json.load(open(os.path.join(out, f"{driver}-{run}-{s}.json")))[s]
            p, t = d[key], d["tls_" + key]
            plain.append(p); tls.append(t)
            cost.append(p / t if rate else t / p)
        f = (lambda v: f"{v/1e3:,.0f}k") if rate else (lambda v: f"{v:.1f}")
        print(f"| {driver} | {label} | {' / '.join(map(f, plain))} | {' / '.join(map(f, tls))} | "
              f"{' / '.join(f'{c:.2f}x' for c in cost)} | {min(cost):.2f}–{max(cost):.2f}x |")
PY
