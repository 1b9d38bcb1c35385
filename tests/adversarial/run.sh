#!/bin/sh
# Runs the adversarial suite against both drivers.
#   tests/adversarial/run.sh [--quick] [--only NAME[,NAME]] [--driver std]
# Binary: $VELTIX_BIN, else ${CARGO_TARGET_DIR:-<workspace>/target}/release/veltix,
# built with `cargo build --release -p veltix-cli` when missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$(dirname "$here")")
bin=${VELTIX_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/veltix}
if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release -p veltix-cli)
fi
case " $* " in
    *" --driver "*) exec python3 "$here/attack.py" --binary "$bin" "$@" ;;
    *) exec python3 "$here/attack.py" --binary "$bin" --driver std,tokio "$@" ;;
esac
