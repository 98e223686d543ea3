#!/usr/bin/env bash
# Runs the ExecMem C programs (Sources/ExecMemTools/Resources/bpf) on uBPF's JIT and interpreter and
# natively (clang -O2, and gcc -O2 if there is a gcc), side by side. uBPF is not part of ExecMem:
# build it yourself (README.md) and pass its directories.
#
#   scripts/ubpf/compare.sh [--json | --kv] [--mcpu v3|v4] [--repeat N] [--rounds N] [--batch-us US]
#                           [--dump DIR] UBPF_SRC_DIR UBPF_BUILD_DIR
#
#   UBPF_SRC_DIR    a checkout of github.com/iovisor/ubpf (headers: vm/inc/ubpf.h)
#   UBPF_BUILD_DIR  its cmake build directory (lib/libubpf.a, vm/ubpf_config.h)
#   --json          one JSON array of objects (one per program) instead of the table
#   --kv            the harness's raw key=value lines (one per program)
#   --mcpu          the -mcpu of the eBPF objects (default v4, as `execmem bench bpf` uses)
#   --repeat N      run every program's harness N times, programs interleaved; min of each time (default 3)
#   --rounds N      interleaved timing rounds per harness run, min taken (default 15)
#   --batch-us US   length of one timed batch in microseconds (default 2000)
#   --dump DIR      also keep DIR/PROG.o (eBPF) and DIR/PROG.ubpf.bin (uBPF's x86-64 code; see README)
#   CLANG=...       the clang with the BPF target (default: the Swift toolchain's)
#
# Times are microseconds. compile = ubpf_load (validation, copy) + ubpf_compile (translate, mmap,
# mprotect), min over 20 fresh VMs. us/run = min over rounds of a batch of calls, each on a fresh copy
# of the 4 KiB input, minus the same batch with a no-op function (so the copy and the call are not
# counted). If `.build/release/execmem` exists, its `bench bpf` output is printed after the table.
set -euo pipefail

mode=table mcpu=v4 repeat=3 rounds=15 batch_us=2000 dump=
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
    --json) mode=json ;;
    --kv) mode=kv ;;
    --mcpu) mcpu=$2; shift ;;
    --repeat) repeat=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --dump) mkdir -p "$2"; dump=$(cd "$2" && pwd); shift ;;
    --batch-us) batch_us=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $# -ne 2 ]]; then sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; fi
ubpf_src=$(cd "$1" && pwd) ubpf_build=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd)
programs_dir=$project/Sources/ExecMemTools/Resources/bpf
programs="sieve memcpy strcmp switch log2 crc32"

if [[ -z ${CLANG:-} ]]; then
    if [[ -x /opt/swift/usr/bin/clang ]]; then CLANG=/opt/swift/usr/bin/clang
    elif command -v swift >/dev/null; then CLANG=$(dirname "$(command -v swift)")/clang
    else CLANG=clang; fi
fi
lib=$ubpf_build/lib/libubpf.a
[[ -f $lib ]] || lib=$(find "$ubpf_build" -name libubpf.a | head -1)
[[ -f $lib ]] || { echo "no libubpf.a under $ubpf_build" >&2; exit 1; }
config=$(dirname "$(find "$ubpf_build" -name ubpf_config.h | head -1)")
incs=(-I"$ubpf_src/vm/inc" -I"$config")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc_flags=()
command -v gcc >/dev/null && gcc_flags=(-DHAVE_GCC_NATIVE)

for p in $programs; do
    src=$programs_dir/$p.c
    "$CLANG" -target bpf -mcpu="$mcpu" -O2 -ffreestanding -c "$src" -o "$work/$p.o"
    natives=("$work/$p.clang.o")
    "$CLANG" -O2 -c "$src" -Dentry=native_clang_entry -o "$work/$p.clang.o"
    if [[ ${#gcc_flags[@]} -gt 0 ]]; then
        gcc -O2 -c "$src" -Dentry=native_gcc_entry -o "$work/$p.gcc.o"
        natives+=("$work/$p.gcc.o")
    fi
    "$CLANG" -std=c11 -O2 -Wall -Wextra "${gcc_flags[@]}" "${incs[@]}" "$here/harness.c" "${natives[@]}" "$lib" -lm \
        -o "$work/bench_$p"
    [[ -n $dump ]] && cp "$work/$p.o" "$dump/$p.o"
done

# Runs repeat times over all programs; per program, the min of every *_us key over the runs.
declare -A merged
for ((r = 0; r < repeat; r++)); do
    for p in $programs; do
        if line=$("$work/bench_$p" "$work/$p.o" "$rounds" "$batch_us" ${dump:+"$dump/$p.ubpf.bin"}); then :; else
            line="program=$p status=harness-failed reason=\"exit $?\""
        fi
        merged[$p]=$(awk -v old="${merged[$p]:-}" -v new="$line" 'BEGIN {
            if (old == "") { print new; exit }
            n = split(old, a, " "); out = ""
            for (i = 1; i <= n; i++) {
                k = a[i]; sub(/=.*/, "", k); v = substr(a[i], length(k) + 2)
                if (k ~ /_us$/ && match(new, "(^| )" k "=[0-9.]+")) {
                    w = substr(new, RSTART, RLENGTH); sub(/^ /, "", w); w = substr(w, length(k) + 2)
                    if (w + 0 < v + 0) v = w
                }
                out = out (i > 1 ? " " : "") k "=" v
            }
            print out }')
    done
done
lines=()
for p in $programs; do lines+=("${merged[$p]}"); done

# key=value line -> value of key (empty if absent)
get() { sed -n "s/.* $2=\(\"[^\"]*\"\|[^ ]*\).*/\1/p" <<<" $1" | tr -d '"'; }

case $mode in
kv) printf '%s\n' "${lines[@]}" ;;
json)
    echo "["
    for i in "${!lines[@]}"; do
        sep=","; [[ $i -eq $((${#lines[@]} - 1)) ]] && sep=""
        # every key=value becomes "key": value (numbers bare, the rest quoted)
        printf '  {%s}%s\n' "$(grep -oE '[a-z0-9_]+=("[^"]*"|[^ ]*)' <<<"${lines[$i]}" | awk -F= '{
            k = $1; v = substr($0, length(k) + 2); gsub(/"/, "", v)
            if (v !~ /^-?[0-9]+(\.[0-9]+)?$/ || k == "r0_dec") v = "\"" v "\""
            printf "%s\"%s\": %s", (NR > 1 ? ", " : ""), k, v }')" "$sep"
    done
    echo "]" ;;
table)
    echo "uBPF $(git -C "$ubpf_src" rev-parse --short HEAD 2>/dev/null || echo '?') vs native; eBPF objects: clang -target bpf -mcpu=$mcpu -O2; times in us"
    fmt='%-7s %-19s %5s %8s %6s %9s %9s %9s %7s %10s  %s\n'
    printf "$fmt" program r0 insns compile bytes ubpf_jit clang_O2 gcc_O2 jit/clg ubpf_interp status
    for l in "${lines[@]}"; do
        jit=$(get "$l" ubpf_jit_us) nat=$(get "$l" native_clang_us) ratio=
        [[ -n $jit && -n $nat ]] && ratio=$(awk -v a="$jit" -v b="$nat" 'BEGIN { if (b > 0) printf "%.2f", a / b }')
        note=$(get "$l" reason)
        [[ $(get "$l" ubpf_pads) =~ ^[1-9] ]] && note="$note ($(get "$l" ubpf_pads) exit pad(s) for uBPF's validator)"
        printf "$fmt" "$(get "$l" program)" "$(get "$l" r0)" "$(get "$l" insns)" "$(get "$l" ubpf_compile_us)" \
            "$(get "$l" ubpf_jit_bytes)" "$jit" "$nat" "$(get "$l" native_gcc_us)" "$ratio" "$(get "$l" ubpf_interp_us)" \
            "$(get "$l" status)$note"
    done
    if [[ -x $project/.build/release/execmem ]]; then
        # Side by side: each engine against native C timed in its own process (this machine's speed
        # drifts between processes), so ExecMem / uBPF = (ExecMem / native) / (uBPF / native).
        echo
        for ((r = 0; r < repeat; r++)); do
            (cd "$project" && .build/release/execmem bench bpf --json) > "$work/execmem-$r.json" || echo "(execmem bench bpf failed)"
        done
        printf '%s\n' "${lines[@]}" > "$work/ubpf.kv"
        python3 "$here/side_by_side.py" "$work/ubpf.kv" "$work"/execmem-*.json
    fi ;;
esac
