#!/usr/bin/env bash
# Python veltix vs veltix-rs (std and tokio drivers), same machine, one run.
#
# Usage: bench/compare.sh [--out FILE] [--iterations N] [--count N]
#                         [--clients N] [--msgs N] [--keep DIR]
#
#   --out FILE      also write the table (Markdown) to FILE, e.g. PERFORMANCE-table.md
#   --iterations N  latency round trips   (default 50000, Python's --latency-iterations)
#   --count N       burst messages        (default 10000, Python's --burst-count)
#   --clients N     stress clients        (default 100,   Python's --stress-clients)
#   --msgs N        stress msgs/client    (default 100,   Python's --stress-msgs)
#   --big-count N   veltix-only burst too (default 1000000), against the limit
#   --keep DIR      keep the raw outputs (JSON, Python's log) in DIR
#
# Environment: VENV (default: <repo>/.venv) is the virtualenv holding Python
# veltix; it is created, and `veltix[benchmark]==3.3.0` (veltix + psutil)
# installed into it, when missing. CARGO (default: cargo). CARGO_TARGET_DIR
# (default: <repo>/target) is where the `veltix` binary is built and found.
#
# Steps: build `veltix` in release; run `python -m veltix.benchmark` (memory,
# latency, burst, stress; its defaults: async socket core, auto engine, one
# warm-up pass) with --save; run `veltix bench --json` for --driver std and
# --driver tokio with the same parameters, and a burst of --big-count messages
# on each; then bench/compare.py prints ONE table (scenario/metric, Python,
# std, tokio, raw TCP, the machine's limit = batched raw TCP, ratios rs/Python
# and rs/limit) and the targets. Python's rates are recomputed to the last
# arrival: see the docstring of bench/compare.py. Takes about 2 minutes once
# built; run it on a quiet machine (it prints the load average first).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CARGO="${CARGO:-cargo}"
OUT=""
KEEP=""
ITERATIONS=50000
COUNT=10000
CLIENTS=100
MSGS=100
BIG_COUNT=1000000

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    --iterations) ITERATIONS="$2"; shift 2 ;;
    --count) COUNT="$2"; shift 2 ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    --msgs) MSGS="$2"; shift 2 ;;
    --big-count) BIG_COUNT="$2"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -n "$KEEP" ]; then
  mkdir -p "$KEEP"
  WORK="$(cd "$KEEP" && pwd)"
else
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
fi

PY="$VENV/bin/python"
if ! "$PY" -c "import veltix, psutil, sys; sys.exit(veltix.__version__ != '3.3.0')" 2>/dev/null; then
  echo "==> installing veltix[benchmark]==3.3.0 into $VENV" >&2
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'veltix[benchmark]==3.3.0'
fi

echo "==> building veltix (release)" >&2
(cd "$ROOT" && "$CARGO" build --release --quiet --locked -p veltix-cli)
# Where cargo put it: <target dir>/release/veltix, the target dir being
# CARGO_TARGET_DIR (or build.target-dir) when set, <repo>/target otherwise.
TARGET_DIR="$(cd "$ROOT" && "$CARGO" metadata --format-version 1 --no-deps --locked |
  "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
VELTIX="$TARGET_DIR/release/veltix"
[ -x "$VELTIX" ] || { echo "compare.sh: $VELTIX was not built" >&2; exit 1; }

echo "==> load average: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)" >&2

echo "==> Python veltix benchmark" >&2
(cd "$WORK" && "$PY" -m veltix.benchmark \
  --only memory latency burst stress \
  --latency-iterations "$ITERATIONS" \
  --burst-count "$COUNT" --burst-payload 64 \
  --stress-clients "$CLIENTS" --stress-msgs "$MSGS" \
  --save "$WORK/python.json" >"$WORK/python.log" 2>&1) || {
  echo "compare.sh: the Python benchmark failed; its output:" >&2
  cat "$WORK/python.log" >&2
  exit 1
}

for driver in std tokio; do
  echo "==> veltix bench --driver $driver" >&2
  "$VELTIX" bench --driver "$driver" --json \
    --iterations "$ITERATIONS" --count "$COUNT" --payload 64 \
    --clients "$CLIENTS" --msgs "$MSGS" >"$WORK/$driver.json"
  echo "==> veltix bench --driver $driver --scenario burst --count $BIG_COUNT" >&2
  "$VELTIX" bench --driver "$driver" --json --scenario burst \
    --count "$BIG_COUNT" --payload 64 >"$WORK/$driver-big.json"
done

echo >&2
"$PY" "$ROOT/bench/compare.py" \
  --python-json "$WORK/python.json" --python-log "$WORK/python.log" \
  --std-json "$WORK/std.json" --tokio-json "$WORK/tokio.json" \
  --std-big-json "$WORK/std-big.json" --tokio-big-json "$WORK/tokio-big.json" \
  ${OUT:+--out "$OUT"}
