#!/usr/bin/env bash
# A fuzzing campaign: every target (or those named) in turn, on N cores, for a
# given time or number of executions; the working corpus is merged into the
# committed one; one row per target is appended to the results table in
# fuzz/README.md. Needs nightly and cargo-fuzz (see fuzz/README.md).
#
# Usage: fuzz/campaign.sh [options] [target...]
#   -t SECONDS   wall time per target (default 600)
#   -n EXECS     stop a target after about EXECS executions (all workers
#                together; -t still caps it)
#   -j N         workers per target (-jobs=N -workers=N; default: all cores)
#   -s SAN       sanitizer: address (cargo-fuzz's default) or none
#   -T           build without trace-compares (`--no-trace-compares`): about
#                2x the executions (frame_decode: 41 000 -> 96 000 per
#                CPU-second here), but no comparison-guided mutation; for
#                volume runs over a corpus grown with it on
#   -l N         -max_len (default 4096)
#   -N LEVEL     nice level (default 10: other work on the machine goes first)
#   -M           do not merge the working corpus into corpus/<target>
#   -Z           no fuzzing: only merge work/<target> into corpus/<target>
#   -R           do not append to fuzz/README.md (print the rows only)
#   -- ARGS      more libFuzzer flags, for every target
#
# Per target: libFuzzer runs with work/<target> (git-ignored, kept between
# campaigns) and corpus/<target>; its logs go to work/logs/<target>/. Then,
# unless -M, corpus/<target> becomes the named seeds of make_corpus.py plus
# at most 200 inputs of both corpora chosen greedily by the edges they add
# (fuzz/minimise.py over libFuzzer's merge control file: edges, not hit
# counts, so that the committed corpus stays small).
# The row: executions (summed over the workers' final stats), executions per
# second of wall time, edges (cov) and features (ft) of the merged corpus
# replayed by the same binary, corpus size before -> after, and findings
# (files libFuzzer wrote to artifacts/<target>/ during the run).
set -euo pipefail
cd "$(dirname "$0")"

secs=600
execs=
jobs=$(nproc)
san=address
max_len=4096
nice_level=10
merge=1
readme=1
fuzz=1
notc=
while getopts "t:n:j:s:l:N:TMZR" opt; do
  case $opt in
    t) secs=$OPTARG ;;
    n) execs=$OPTARG ;;
    j) jobs=$OPTARG ;;
    s) san=$OPTARG ;;
    l) max_len=$OPTARG ;;
    N) nice_level=$OPTARG ;;
    T) notc=1 ;;
    M) merge= ;;
    Z) fuzz= readme= ;;
    R) readme= ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
targets=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  targets+=("$1")
  shift
done
[ "${1:-}" = "--" ] && shift
extra=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
case $san in
  address) target_dir=target; build_flags=() ;;
  none) target_dir=target/none; build_flags=(-s none --target-dir target/none) ;;
  *) echo "sanitizer: address or none" >&2; exit 2 ;;
esac
if [ -n "$notc" ]; then
  target_dir=target/$san-notc
  build_flags=(-s "$san" --no-trace-compares --target-dir "$target_dir")
  san_label="$san, no trace-compares"
else
  san_label=$san
fi
bin_dir=$target_dir/$triple/release

echo "==> cargo +nightly fuzz build ${build_flags[*]} ${targets[*]}"
for t in "${targets[@]}"; do
  nice -n "$nice_level" cargo +nightly fuzz build "${build_flags[@]}" "$t"
done

is_seed() { ! [[ $(basename "$1") =~ ^[0-9a-f]{40}$ ]]; }
# 1234567 -> "1 234 567"
num() { sed -e :a -e 's/\([0-9]\)\([0-9]\{3\}\)\($\| \)/\1 \2\3/;ta' <<<"$1"; }
count() { find "$1" -maxdepth 1 -type f ! -name '.*' | wc -l; }

rows=()
started=$(date -u +%Y-%m-%dT%H:%MZ)
for t in "${targets[@]}"; do
  bin=$PWD/$bin_dir/$t
  mkdir -p "work/$t" "corpus/$t" "artifacts/$t" "work/logs/$t"
  [ -n "$fuzz" ] && rm -f "work/logs/$t"/fuzz-*.log
  before_files=$(count "corpus/$t")
  before_artifacts=$(count "artifacts/$t")
  limits=(-max_total_time="$secs")
  if [ -n "$execs" ]; then
    limits+=(-runs=$(((execs + jobs - 1) / jobs)))
  fi
  t0=$(date +%s)
  if [ -n "$fuzz" ]; then
    echo "==> $t: $jobs workers, ${secs}s${execs:+ or $execs executions}, sanitizer $san_label"
    # -jobs writes each worker's output to fuzz-<n>.log in the current folder.
    (cd "work/logs/$t" && nice -n "$nice_level" "$bin" \
      -artifact_prefix="$OLDPWD/artifacts/$t/" -max_len="$max_len" \
      -jobs="$jobs" -workers="$jobs" -print_final_stats=1 "${limits[@]}" \
      ${extra[@]+"${extra[@]}"} "$OLDPWD/work/$t" "$OLDPWD/corpus/$t" \
      >"$OLDPWD/work/logs/$t/driver.log" 2>&1) || true
  else
    echo "==> $t: merging work/$t into corpus/$t"
  fi
  wall=$(($(date +%s) - t0))
  runs=$(cat "work/logs/$t"/fuzz-*.log 2>/dev/null |
    sed -n 's/^stat::number_of_executed_units: *//p' | awk '{s += $1} END {print s + 0}')
  finished=$(cat "work/logs/$t"/fuzz-*.log 2>/dev/null | grep -c '^stat::number_of_executed_units' || true)
  if [ "$finished" -lt "$jobs" ]; then
    # A worker that crashed prints no final stats: count its last status line.
    for f in "work/logs/$t"/fuzz-*.log; do
      grep -q '^stat::number_of_executed_units' "$f" && continue
      last=$(grep -Eo '^#[0-9]+' "$f" | tail -1 | tr -d '#')
      runs=$((runs + ${last:-0}))
    done
  fi
  findings=$(($(count "artifacts/$t") - before_artifacts))

  if [ -n "$merge" ]; then
    # The edges of every input of both corpora (a merge into an empty folder
    # runs them all and writes a control file), then minimise.py keeps the
    # named seeds and picks greedily the inputs that add the most edges, up
    # to 200 files.
    tmp=$(mktemp -d)
    mkdir "$tmp/out"
    nice -n "$nice_level" "$bin" -merge=1 -use_counters=0 -max_len="$max_len" \
      -merge_control_file="$tmp/control" "$tmp/out" "corpus/$t" "work/$t" \
      >"work/logs/$t/merge.log" 2>&1 || true
    if [ -s "$tmp/control" ]; then
      python3 minimise.py "$tmp/control" "corpus/$t" 200 | tee -a "work/logs/$t/merge.log"
    fi
    rm -rf "$tmp"
  fi
  [ -n "$fuzz" ] || continue
  after_files=$(count "corpus/$t")
  # Edges and features of the (merged) corpus, as this binary sees them.
  inited=$("$bin" -runs=0 -max_len="$max_len" "corpus/$t" 2>&1 | grep -E 'INITED|DONE' | tail -1 || true)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$inited")
  ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$inited")
  rate=$((runs / (wall > 0 ? wall : 1)))
  row="| \`$t\` | $san_label | ${wall}s × $jobs | $(num "$runs") | $(num "$rate") | ${cov:-?} | ${ft:-?} | $before_files → $after_files | $([ "$findings" -eq 0 ] && echo none || echo "$findings in artifacts/$t") |"
  echo "$row"
  rows+=("$row")
done

[ ${#rows[@]} -gt 0 ] || exit 0
machine="$(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
command="fuzz/campaign.sh -t $secs${execs:+ -n $execs} -j $jobs -s $san${notc:+ -T} -l $max_len -N $nice_level${extra[*]:+ -- ${extra[*]}} ${targets[*]}"
{
  echo
  echo "#### $started, $machine"
  echo
  echo "\`$command\`"
  echo
  echo "| target | sanitizer | wall × workers | executions | exec/s | cov | ft | corpus files | findings |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >work/logs/last-campaign.md
cat work/logs/last-campaign.md
if [ -n "$readme" ]; then
  # Insert before the marker that ends the results section.
  marker='<!-- campaign.sh inserts new results above this line -->'
  grep -qF "$marker" README.md || { echo "no results marker in fuzz/README.md" >&2; exit 1; }
  awk -v marker="$marker" -v table="work/logs/last-campaign.md" '
    $0 == marker { while ((getline line < table) > 0) print line; print "" }
    { print }' README.md >README.md.new && mv README.md.new README.md
  echo "==> appended to fuzz/README.md"
fi
