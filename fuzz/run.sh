#!/bin/bash
# Fuzzes every parser of outside input with libFuzzer (README "Fuzzing").
#
#   fuzz/run.sh [target...]        all five targets when none is named
#   RUNS=10000000                  executions per target (libFuzzer -runs)
#   MAX_TIME=0                     seconds per target, 0 = no limit (libFuzzer -max_total_time)
#
# Stable Rust is enough: libfuzzer-sys builds libFuzzer with the system C++ compiler and
# rustc's own LLVM adds the coverage instrumentation (-Cpasses=sancov-module), the flags
# cargo-fuzz passes, without its nightly-only sanitizer option. --target keeps the
# instrumentation out of build scripts and proc macros. The corpus grows in target/fuzz/corpus;
# crashes are written to target/fuzz/artifacts and make this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-0}
TARGETS=${*:-uci jellyfin tc netlink conntrack}
HOST=$(rustc -vV | sed -n 's/^host: //p')
OUT=target/fuzz
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
(cd fuzz && cargo build --release --target "$HOST" --target-dir "../$OUT")
status=0
for t in $TARGETS; do
    mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
    seeds=(fuzz/seeds/$t)
    # The UCI corpus of the grammar tests (outputs of OpenWrt's own uci) seeds the UCI target.
    [ "$t" = uci ] && seeds+=(tests/fixtures/uci/good tests/fixtures/uci/bad)
    log=$OUT/$t.log
    if "$OUT/$HOST/release/$t" -runs="$RUNS" -max_total_time="$MAX_TIME" -print_final_stats=1 \
        -rss_limit_mb=512 -artifact_prefix="$OUT/artifacts/$t/" \
        "$OUT/corpus/$t" "${seeds[@]}" >"$log" 2>&1; then
        result="0 crashes"
    else
        result="FAILED (see $log and $OUT/artifacts/$t/)"
        status=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    echo "fuzz $t: ${runs:-?} executions in ${secs:-?} s, $result"
done
exit $status
