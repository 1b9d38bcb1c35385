#!/usr/bin/env bash
# The project's test command: formatting, lints, and every test of the workspace.
# Usage: ./scripts/test.sh        (from anywhere inside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo fmt --version >/dev/null 2>&1; then
  echo "==> cargo fmt --all --check"
  cargo fmt --all --check
else
  echo "!!! rustfmt is not installed: SKIPPING the format check" >&2
fi

if cargo clippy --version >/dev/null 2>&1; then
  echo "==> cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
else
  echo "!!! clippy is not installed: SKIPPING lints" >&2
fi

echo "==> cargo test --workspace"
cargo test --workspace
