#!/usr/bin/env bash
# Runs one libFuzzer target of ExecMem (see Fuzz/README.md).
#
#   Fuzz/run.sh TARGET runs N [ARGS...]     N inputs (-runs=N), new finds go to a scratch corpus
#   Fuzz/run.sh TARGET time S [ARGS...]     S seconds (-max_total_time=S)
#   Fuzz/run.sh TARGET merge SEEDDIR        minimise SEEDDIR into Fuzz/Corpus/TARGET (libFuzzer -merge=1)
#   Fuzz/run.sh TARGET replay FILE...       run the given inputs once each (a crash reproduces)
#
# TARGET is one of: elf archive bpfelf loader assembler verifier.
# Every run uses -timeout=1 (an input taking over 1 s is a hang) and -rss_limit_mb=512
# (bounded memory) and -malloc_limit_mb=512 (no single allocation over 512 MiB).
# Environment: FUZZ_BUILD=0 skips the build; FUZZ_WORK (default /tmp/execmem-fuzzing/TARGET) holds the
# scratch corpus, crash artifacts and the log.
set -euo pipefail
export SWIFT_BACKTRACE=enable=no  # a crash is reported by libFuzzer at once (the backtracer would turn it into a timeout)
FUZZ="$(cd "$(dirname "$0")" && pwd)"
target="${1:?target: elf archive bpfelf loader assembler verifier}"; mode="${2:?mode: runs time merge replay}"; shift 2
case "$target" in
    elf) exe=FuzzELF ;; archive) exe=FuzzArchive ;; bpfelf) exe=FuzzBPFELF ;;
    loader) exe=FuzzLoader ;; assembler) exe=FuzzAssembler ;; verifier) exe=FuzzVerifier ;;
    *) echo "run.sh: unknown target '$target'" >&2; exit 2 ;;
esac
if [ "${FUZZ_BUILD:-1}" != 0 ]; then
    swift build -c release --sanitize=fuzzer --package-path "$FUZZ" --product "$exe" >&2
fi
bin="$(swift build -c release --sanitize=fuzzer --package-path "$FUZZ" --show-bin-path)/$exe"
corpus="$FUZZ/Corpus/$target"
work="${FUZZ_WORK:-/tmp/execmem-fuzzing/$target}"
mkdir -p "$corpus" "$work/corpus" "$work/artifacts"
limits=(-timeout=1 -rss_limit_mb=512 -malloc_limit_mb=512 -artifact_prefix="$work/artifacts/")
case "$target" in assembler) limits+=(-max_len=4096) ;; verifier) limits+=(-max_len=8192) ;; *) limits+=(-max_len=65536) ;; esac
case "$mode" in
    runs) n="${1:?number of inputs}"; shift
          exec "$bin" "${limits[@]}" -runs="$n" -print_final_stats=1 "$@" "$work/corpus" "$corpus" ;;
    time) s="${1:?seconds}"; shift
          exec "$bin" "${limits[@]}" -max_total_time="$s" -print_final_stats=1 "$@" "$work/corpus" "$corpus" ;;
    merge) seeds="${1:?seed directory}"; shift
          exec "$bin" "${limits[@]}" -merge=1 "$corpus" "$seeds" "$@" ;;
    replay) exec "$bin" "${limits[@]}" "$@" ;;
    *) echo "run.sh: unknown mode '$mode'" >&2; exit 2 ;;
esac
