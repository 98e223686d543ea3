#!/usr/bin/env bash
# CI's brief fuzzing: builds the six targets and runs each for SECONDS (default 10, a minute in all)
# from its checked-in corpus, with the campaign's limits (1 s per input, 512 MiB). Any crash, hang or
# memory overrun fails; its input is left in $FUZZ_WORK/<target>/artifacts.
set -euo pipefail
FUZZ="$(cd "$(dirname "$0")" && pwd)"
seconds="${1:-10}"
swift build -c release --sanitize=fuzzer --package-path "$FUZZ" 2>&1 | grep -E "error|warning: unre|Compiling|Build complete" | tail -3
export FUZZ_WORK_ROOT="${FUZZ_WORK_ROOT:-$(mktemp -d /tmp/execmem-fuzz-ci.XXXXXX)}"
for target in elf archive bpfelf loader assembler verifier; do
    log="$FUZZ_WORK_ROOT/$target.log"
    if ! FUZZ_BUILD=0 FUZZ_WORK="$FUZZ_WORK_ROOT/$target" "$FUZZ/run.sh" "$target" time "$seconds" > "$log" 2>&1; then
        grep -E "ERROR|SUMMARY|Test unit written" "$log" >&2 || tail -20 "$log" >&2
        echo "fuzz: $target failed (log $log)" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    printf 'fuzz: %-9s %8s inputs in %ss, peak RSS %s MB, 0 crashes\n' "$target" "$runs" "$seconds" "$rss"
done
