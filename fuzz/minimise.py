#!/usr/bin/env python3
"""Chooses the committed corpus of one target from a libFuzzer merge control file.

Usage (fuzz/campaign.sh runs it): python3 fuzz/minimise.py CONTROL CORPUS_DIR [MAX_FILES]

CONTROL is the -merge_control_file of `<target> -merge=1 -use_counters=0 OUT
corpus/<t> work/<t>`, which lists the features (edges) of every input. libFuzzer's
own merge keeps, smallest first, every input that adds a feature: hundreds of
small files for a target with two thousand edges. This picks greedily the input
that adds the most features not yet covered (lazily re-evaluated: gains only
shrink), starting from the named seeds of make_corpus.py (always kept), until
nothing is left to gain or CORPUS_DIR holds MAX_FILES files (default 200). Then
the SHA-1-named files of CORPUS_DIR are replaced by the chosen inputs, named by
their SHA-1. Prints what it kept and the features covered.
"""

import hashlib
import heapq
import os
import re
import shutil
import sys

SHA1 = re.compile(r"[0-9a-f]{40}")


def main():
    control, corpus = sys.argv[1], os.path.normpath(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    lines = open(control).read().split("\n")
    n = int(lines[0])
    files = [os.path.normpath(f) for f in lines[2 : 2 + n]]
    features = {}
    for line in lines[2 + n :]:
        parts = line.split()
        if parts and parts[0] == "FT":
            features[int(parts[1])] = set(map(int, parts[2:]))

    def is_seed(i):
        return os.path.dirname(files[i]) == corpus and not SHA1.fullmatch(os.path.basename(files[i]))

    seeds = [i for i in range(n) if is_seed(i)]
    covered = set()
    for i in seeds:
        covered |= features.get(i, set())
    everything = set().union(*features.values()) if features else set()

    # Lazy greedy: (-gain, size, index); a popped entry whose gain is stale is pushed back.
    heap = [(-len(f - covered), os.path.getsize(files[i]), i) for i, f in features.items() if not is_seed(i)]
    heapq.heapify(heap)
    chosen = []
    while heap and len(seeds) + len(chosen) < limit:
        neg, size, i = heapq.heappop(heap)
        gain = len(features[i] - covered)
        if gain == 0:
            continue
        if gain < -neg and heap and (-gain, size, i) > heap[0]:
            heapq.heappush(heap, (-gain, size, i))
            continue
        chosen.append(i)
        covered |= features[i]

    # Read everything before touching the folder (chosen inputs may live in it).
    keep = {}
    for i in chosen:
        data = open(files[i], "rb").read()
        keep[hashlib.sha1(data).hexdigest()] = data
    for name in os.listdir(corpus):
        if SHA1.fullmatch(name) and name not in keep:
            os.remove(os.path.join(corpus, name))
    for name, data in keep.items():
        path = os.path.join(corpus, name)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
    share = 100 * len(covered) / max(1, len(everything))
    print(
        f"{corpus}: {len(seeds)} seeds + {len(keep)} inputs cover {len(covered)} of "
        f"{len(everything)} edges ({share:.0f}%) reached by {len(features)} inputs"
    )


if __name__ == "__main__":
    main()
