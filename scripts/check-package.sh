#!/usr/bin/env bash
# Packaging check of the publishable crates: their metadata is complete and
# real (no placeholder URLs), and `cargo package` can build their .crate
# files (--no-verify: the compile is cargo test's job). Without a registry
# (offline), `cargo package --list` still checks what each package holds.
# Usage: ./scripts/check-package.sh   (run by scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

crates=(veltix-proto veltix-sim veltix-tls veltix-std veltix-tokio veltix-cli)

echo "==> package metadata: ${crates[*]}"
cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import json, re, sys
crates = sys.argv[1:]
meta = {p["name"]: p for p in json.load(sys.stdin)["packages"]}
bad = []
for name in crates:
    p = meta.get(name)
    if p is None:
        bad.append(f"{name}: not in the workspace")
        continue
    if p.get("publish") == []:
        bad.append(f"{name}: publish = false, but it is a library crate meant for crates.io")
    for field in ("description", "license", "readme"):
        if not p.get(field):
            bad.append(f"{name}: no {field}")
    kw = p.get("keywords") or []
    if not kw or len(kw) > 5 or any(len(k) > 20 or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", k) for k in kw):
        bad.append(f"{name}: keywords {kw} (1-5, lowercase, at most 20 characters)")
    if not p.get("categories"):
        bad.append(f"{name}: no categories")
    for field in ("repository", "homepage", "documentation"):
        url = p.get(field)
        if url and re.search(r"example\.(com|org|net|invalid)|\.invalid\b|localhost|TODO|XXX", url):
            bad.append(f"{name}: placeholder {field} {url!r} (remove it rather than invent one)")
for b in bad:
    print("!!! " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
' "${crates[@]}"

pkgs=()
for c in "${crates[@]}"; do
  pkgs+=(-p "$c")
  echo "==> cargo package --list -p $c"
  files=$(cargo package --list --locked --allow-dirty -p "$c")
  grep -qx 'README.md' <<<"$files" || { echo "!!! $c: README.md is not packaged" >&2; exit 1; }
  grep -qx 'Cargo.toml' <<<"$files"
done

# All together, so that the crates' dependencies on each other resolve
# without them being on crates.io.
echo "==> cargo package --no-verify ${pkgs[*]}"
if ! out=$(cargo package --no-verify --locked --allow-dirty "${pkgs[@]}" 2>&1); then
  echo "$out" >&2
  if [ -z "${CI:-}" ] && grep -qiE 'failed to (download|get|query|load)|unable to update|network|could not resolve host|offline' <<<"$out"; then
    echo "!!! no registry: only the file lists above were checked (SKIPPING cargo package)" >&2
  else
    exit 1
  fi
fi
