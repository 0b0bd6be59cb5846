#!/usr/bin/env bash
# Every target of issue 11, RUNS times (default 3), with the spread: runs `bench/run.sh`
# RUNS times without the WebSocket part, then `bench/ws.sh` and `bench/signin_rss.sh` (memory
# after 1,000 sign-ins) once each (they make their own RUNS runs), and writes
# docs/BENCHMARKS.md as the spread table (bench/spread.py) followed by the last run's full
# report, then the WebSocket and sign-in reports. Each run's own report
# is kept beside it in docs/benchmarks/run-N.md, so every figure in the spread has its raw output.
#
# Usage: bench/suite.sh            RUNS=5 bench/suite.sh
#        SKIP_WS=1 bench/suite.sh  (keeps the last WebSocket report instead of measuring)
#        SKIP_SIGNIN=1 bench/suite.sh  (likewise for the memory after sign-ins)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
REPORT="$ROOT/docs/BENCHMARKS.md"
KEPT="$ROOT/docs/benchmarks"

mkdir -p "$KEPT"
rm -f "$KEPT"/run-*.md
for ((run = 1; run <= RUNS; run++)); do
    echo "suite: run $run of $RUNS" >&2
    SKIP_WS=1 "$ROOT/bench/run.sh"
    cp "$REPORT" "$KEPT/run-$run.md"
done

if [[ ${SKIP_WS:-0} != 1 ]]; then
    echo "suite: WebSocket fan-out (bench/ws.sh, $RUNS runs)" >&2
    RUNS=$RUNS "$ROOT/bench/ws.sh"
fi
if [[ ${SKIP_SIGNIN:-0} != 1 ]]; then
    echo "suite: memory after sign-ins (bench/signin_rss.sh, $RUNS runs)" >&2
    RUNS=$RUNS "$ROOT/bench/signin_rss.sh"
fi

reports=()
for ((run = 1; run <= RUNS; run++)); do reports+=("$KEPT/run-$run.md"); done
{
    printf '# Benchmarks\n\nWritten by `bench/suite.sh` (RUNS=%s); do not edit by hand, run it again.\n\n' "$RUNS"
    python3 "$ROOT/bench/spread.py" "${reports[@]}"
    printf '\nEach run'"'"'s full report: `docs/benchmarks/run-N.md`. The last one follows, then the\n'
    printf 'WebSocket fan-out report of `bench/ws.sh` (its own %s runs, with their spread).\n\n' "$RUNS"
    # The last run's report one heading level down, without its title.
    sed -e '1{/^# /d}' -e 's/^#/##/' "$KEPT/run-$RUNS.md" | sed '/^## WebSocket fan-out$/,$d'
    printf '## WebSocket fan-out (bench/ws.sh)\n\n'
    sed -e 's/^# .*//' -e 's/^#/##/' "$ROOT/docs/BENCHMARKS-live-updates.md"
    if [[ -s $ROOT/docs/BENCHMARKS-signin-rss.md ]]; then
        printf '\n## Memory after sign-ins (bench/signin_rss.sh)\n\n'
        sed -e 's/^# .*//' -e 's/^#/##/' "$ROOT/docs/BENCHMARKS-signin-rss.md"
    fi
} >"$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
echo "suite: wrote $REPORT" >&2
