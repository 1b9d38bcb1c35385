#!/usr/bin/env bash
# The project's test command: formatting, MSRV check, lints, docs, the
# packaging check, and every test of the workspace.
# Usage: ./scripts/test.sh        (from anywhere inside the repository)
#
# Every cargo command that resolves dependencies runs with --locked: a
# Cargo.lock that does not match the manifests fails the run instead of being
# rewritten (`cargo fmt` takes no --locked and does not resolve dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo fmt --version >/dev/null 2>&1; then
  echo "==> cargo fmt --all --check"
  cargo fmt --all --check
else
  echo "!!! rustfmt is not installed: SKIPPING the format check" >&2
fi

# Also the first check of Cargo.lock (cargo metadata --locked).
echo "==> scripts/check-msrv.sh"
./scripts/check-msrv.sh

if cargo clippy --version >/dev/null 2>&1; then
  echo "==> cargo clippy --workspace --all-targets --locked -- -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
else
  echo "!!! clippy is not installed: SKIPPING lints" >&2
fi

echo "==> RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --locked"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# The library crates and the CLI package with real metadata.
echo "==> scripts/check-package.sh"
./scripts/check-package.sh

# The Python peer for the interop tests: veltix 3.3.0 in a project-local venv.
if ! .venv/bin/python -c "import veltix, sys; sys.exit(veltix.__version__ != '3.3.0')" 2>/dev/null; then
  echo "==> installing Python veltix==3.3.0 into .venv"
  if ! { python3 -m venv .venv && .venv/bin/pip install --quiet --disable-pip-version-check 'veltix==3.3.0'; }; then
    if [ -n "${CI:-}" ]; then
      echo "!!! cannot install Python veltix (required in CI)" >&2
      exit 1
    fi
    echo "!!! cannot install Python veltix: interop tests will be SKIPPED loudly" >&2
  fi
fi
export VELTIX_PYTHON="$PWD/.venv/bin/python"

echo "==> cargo test --workspace --locked"
cargo test --workspace --locked
