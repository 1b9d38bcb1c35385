#!/usr/bin/env bash
# Checks the declared MSRV (`rust-version`) against the locked dependency tree.
#
# Usage: ./scripts/check-msrv.sh     (from anywhere inside the repository)
#
# For each workspace member, takes the closure of its normal and build
# dependencies in Cargo.lock (`cargo metadata --locked`, resolve graph, all
# target platforms, features as unified for the workspace) and the highest
# `rust-version` declared by a package in it (an edition implies a floor too:
# 2024 -> 1.85, 2021 -> 1.56, 2018 -> 1.31). Fails (exit 1) when a member
# declares a lower rust-version than that, naming the crate that needs more.
# Dev-dependencies are reported, not enforced: they only build the tests.
#
# Needs cargo and python3 (stdlib only); no network once the dependencies are
# in cargo's cache (it runs `cargo metadata --offline` first and only falls
# back to fetching sources from the registry when they are missing). Another
# toolchain is never needed: nothing is compiled.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"
META="$(mktemp)"
trap 'rm -f "$META"' EXIT

if ! "$CARGO" metadata --locked --offline --format-version 1 >"$META" 2>/dev/null; then
  # Not every dependency is in the local cache yet (or Cargo.lock is stale, in
  # which case this fails again below with cargo's own message).
  "$CARGO" metadata --locked --format-version 1 >"$META"
fi

python3 - "$META" <<'PY'
import json
import sys

EDITION_FLOOR = {"2015": (1, 0, 0), "2018": (1, 31, 0), "2021": (1, 56, 0), "2024": (1, 85, 0)}


def parse(v):
    """'1.85' / '1.71.1' -> (1, 85, 0) / (1, 71, 1)."""
    parts = [int(x) for x in v.split(".")]
    return tuple((parts + [0, 0, 0])[:3])


def show(t):
    return ".".join(map(str, t[:2])) if t[2] == 0 else ".".join(map(str, t))


with open(sys.argv[1]) as f:
    meta = json.load(f)

pkgs = {p["id"]: p for p in meta["packages"]}
members = meta["workspace_members"]
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}


def label(pid):
    p = pkgs[pid]
    return f"{p['name']} {p['version']}"


def needs(pid):
    """The minimum Rust a package asks for, and why: (version, reason)."""
    p = pkgs[pid]
    rv = parse(p["rust_version"]) if p.get("rust_version") else (1, 0, 0)
    ed = EDITION_FLOOR.get(p["edition"], (1, 0, 0))
    if ed > rv:
        return ed, f"edition {p['edition']}"
    return rv, f"rust-version {p['rust_version']}" if p.get("rust_version") else "nothing"


def closure(root, with_dev):
    """Packages reachable from root by normal/build edges (plus root's own
    dev edges when with_dev), with the path that reached each one."""
    seen = {root: [root]}
    todo = [root]
    while todo:
        pid = todo.pop()
        for dep in nodes[pid]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if not (with_dev and pid == root):
                kinds.discard("dev")  # a dependency's dev-deps only build its own tests
            if not kinds or dep["pkg"] in seen:
                continue
            seen[dep["pkg"]] = seen[pid] + [dep["pkg"]]
            todo.append(dep["pkg"])
    return seen


def worst(root, with_dev):
    """(highest version needed, [(package id, reason, path)] of the packages needing it)."""
    top, who = (0, 0, 0), []
    for pid, path in sorted(closure(root, with_dev).items(), key=lambda kv: label(kv[0])):
        if pid in members:
            continue  # a member's own rust-version is what we are checking
        v, why = needs(pid)
        if v > top:
            top, who = v, []
        if v == top:
            who.append((pid, why, path))
    return top, who


def names(who):
    return ", ".join(label(pid) for pid, _, _ in who)


failed = False
overall, overall_dev = {}, {}
for m in members:
    p = pkgs[m]
    declared = parse(p["rust_version"]) if p.get("rust_version") else None
    v, who = worst(m, with_dev=False)
    vd, whod = worst(m, with_dev=True)
    for acc, ver, w in ((overall, v, who), (overall_dev, vd, whod)):
        if w and ver >= acc.get("v", (0, 0, 0)):
            if ver > acc.get("v", (0, 0, 0)):
                acc.clear()
                acc["v"] = ver
            acc.setdefault("who", {}).update({label(pid): None for pid, _, _ in w})
    if not who:
        continue
    pid, why, path = who[0]
    chain = " -> ".join(pkgs[x]["name"] for x in path)
    if declared is None or declared < v:
        have = f"declares rust-version {p['rust_version']}" if declared else "declares no rust-version"
        print(f"check-msrv: FAIL: {p['name']} {have}, but {label(pid)} needs {show(v)} "
              f"({why}; via {chain})" + (f"; also needing {show(v)}: {names(who[1:])}" if who[1:] else ""),
              file=sys.stderr)
        failed = True
    else:
        dev = f"; with dev-dependencies {show(vd)} ({names(whod)})" if vd > v else ""
        print(f"check-msrv: ok: {p['name']} declares {p['rust_version']}, "
              f"its dependencies need {show(v)} ({names(who)}){dev}")

for title, acc in (("libraries and binaries (normal + build deps)", overall),
                   ("test suite (with dev-deps)", overall_dev)):
    if acc:
        print(f"check-msrv: MSRV of the {title}: {show(acc['v'])}, set by {', '.join(acc['who'])}")
sys.exit(1 if failed else 0)
PY
