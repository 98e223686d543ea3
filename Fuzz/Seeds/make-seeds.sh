#!/usr/bin/env bash
# Builds raw seed inputs for every fuzz target from real objects, into OUT (default /tmp/execmem-seeds):
#   x86-64 objects: Seeds/c/*.c and *.cc with gcc and clang at -O0..-O3 (plus -fPIC, -ffunction-sections,
#                   -mcmodel=large, -g variants), a few members of Debian's libz.a / libbz2.a
#   archives:       small GNU and BSD archives of those objects, and libz.a members re-archived
#   eBPF objects:   Sources/ExecMemTools/Resources/bpf/*.c, clang -target bpf -mcpu=v1..v4 -O1/-O2
#   assembler:      the `-- asm` sections of the conformance suite's .data files
#   verifier:       the conformance programs assembled (`execmem bpf asm`), the eBPF objects' code sections
#   loader:         single objects, and object + archive / object + object pairs joined by the marker
# Then Fuzz/run.sh merges them (libFuzzer -merge=1) into Fuzz/Corpus/<target>: see README.md.
set -euo pipefail
FUZZ="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(cd "$FUZZ/.." && pwd)"
OUT="${1:-/tmp/execmem-seeds}"
CONFORMANCE="${CONFORMANCE:-/work/shared/bpf-conformance/tests}"
TOOLCLANG="${TOOLCLANG:-/opt/swift/usr/bin/clang}"
OBJCOPY="${OBJCOPY:-/opt/swift/usr/bin/llvm-objcopy}"
LLVMAR="${LLVMAR:-/opt/swift/usr/bin/llvm-ar}"
OBJDUMP="${OBJDUMP:-/opt/swift/usr/bin/llvm-objdump}"
rm -rf "$OUT"; mkdir -p "$OUT"/{elf,archive,bpfelf,loader,assembler,verifier} "$OUT/tmp"
T="$OUT/tmp"

# x86-64 objects.
for src in "$FUZZ"/Seeds/c/*.c "$FUZZ"/Seeds/c/*.cc; do
    base="$(basename "${src%.*}")"
    for cc in gcc "$TOOLCLANG"; do
        ccname="$(basename "$cc")"
        case "$src" in *.cc) [ "$ccname" = gcc ] && cc=g++ || cc="$TOOLCLANG++" ;; esac
        command -v "$cc" >/dev/null || continue
        for opt in -O0 -O1 -O2 -O3 "-O2 -fPIC" "-O1 -ffunction-sections -fdata-sections" "-O2 -mcmodel=large" "-O0 -g" "-Os -fno-pic -fcommon"; do
            tag="$(echo "$opt" | tr -d ' =-')"
            "$cc" $opt -c "$src" -o "$T/$base-$ccname-$tag.obj" 2>/dev/null || true
        done
    done
done
# Every object for the ELF reader; the loader gets the ones without debug info (smaller).
cp "$T"/*.obj "$OUT/elf/"
for f in "$T"/*.obj; do case "$f" in *O0g*) ;; *) cp "$f" "$OUT/loader/" ;; esac; done
# A shared object and an executable: the ELF reader takes any ELF64.
gcc -O2 -shared -fPIC "$FUZZ/Seeds/c/lib2.c" -o "$OUT/elf/lib2.so" 2>/dev/null || true
# Members of Debian static libraries.
mkdir -p "$T/z" "$T/bz2"
(cd "$T/z" && ar x /usr/lib/x86_64-linux-gnu/libz.a adler32.o crc32.o compress.o uncompr.o zutil.o 2>/dev/null) || true
(cd "$T/bz2" && ar x /usr/lib/x86_64-linux-gnu/libbz2.a randtable.o crctable.o 2>/dev/null) || true
for f in "$T"/z/*.o "$T"/bz2/*.o; do [ -f "$f" ] && cp "$f" "$OUT/elf/deb-$(basename "${f%.o}").obj" && cp "$f" "$OUT/loader/deb-$(basename "${f%.o}").obj"; done

# Archives: GNU (ar), BSD (llvm-ar --format=bsd), long member names, no symbol table, libz members.
cp "$T/lib1-gcc-O2.obj" "$T/lib1.o"; cp "$T/lib2-gcc-O2.obj" "$T/lib2.o"
cp "$T/lib2-gcc-O0.obj" "$T/a_member_with_a_long_name_over_sixteen.o"
(cd "$T" && ar rcs "$OUT/archive/gnu.a" lib1.o lib2.o)
(cd "$T" && ar rcs "$OUT/archive/gnu-long.a" lib1.o a_member_with_a_long_name_over_sixteen.o)
(cd "$T" && ar rcS "$OUT/archive/gnu-nosym.a" lib1.o lib2.o)
(cd "$T" && "$LLVMAR" rcs --format=bsd "$OUT/archive/bsd.a" lib1.o lib2.o)
(cd "$T" && "$LLVMAR" rcs --format=bsd "$OUT/archive/bsd-long.a" lib1.o a_member_with_a_long_name_over_sixteen.o)
(cd "$T" && "$LLVMAR" rcs --format=gnu "$OUT/archive/llvm-gnu.a" lib1.o lib2.o)
(cd "$T" && "$LLVMAR" rcs --thin "$OUT/archive/thin.a" lib1.o lib2.o)
(cd "$T/z" && ar rcs "$OUT/archive/zlib-part.a" adler32.o crc32.o zutil.o)

# Loader: objects joined by the marker "\0FZNEXT\0" (Sources/FuzzLoader/main.swift).
marker() { printf '\0FZNEXT\0'; }
join() { local out="$1"; shift; local first=1; for f in "$@"; do [ -f "$f" ] || return 0; done; : > "$out"; for f in "$@"; do [ $first = 1 ] || marker >> "$out"; cat "$f" >> "$out"; first=0; done; }
for cc in gcc clang; do
    [ -f "$T/main_ar-$cc-O2.obj" ] || continue
    join "$OUT/loader/pair-ar-gnu-$cc" "$T/main_ar-$cc-O2.obj" "$OUT/archive/gnu.a"
    join "$OUT/loader/pair-ar-bsd-$cc" "$T/main_ar-$cc-O1.obj" "$OUT/archive/bsd.a"
    join "$OUT/loader/pair-objs-$cc" "$T/main_ar-$cc-O0.obj" "$T/lib1-$cc-O0.obj" "$T/lib2-$cc-O3.obj"
    join "$OUT/loader/pair-dup-$cc" "$T/basic-$cc-O2.obj" "$T/basic-$cc-O1.obj"
    join "$OUT/loader/pair-comdat-$cc" "$T/comdat-$cc-O2.obj" "$T/comdat-$cc-O0.obj"
done

# eBPF objects.
for src in "$ROOT"/Sources/ExecMemTools/Resources/bpf/*.c; do
    base="$(basename "${src%.c}")"
    [ "$base" = native_main ] && continue
    for cpu in v1 v2 v3 v4; do
        for opt in -O2 -O1; do
            "$TOOLCLANG" -target bpf -mcpu=$cpu $opt -c "$src" -o "$T/bpf-$base-$cpu$opt.obj" 2>/dev/null || continue
            cp "$T/bpf-$base-$cpu$opt.obj" "$OUT/bpfelf/"
            [ $cpu = v3 ] && [ $opt = -O2 ] && cp "$T/bpf-$base-$cpu$opt.obj" "$OUT/elf/"
            # Code sections as raw bytecode for the verifier.
            for sec in $("$OBJDUMP" -h "$T/bpf-$base-$cpu$opt.obj" | awk '$NF == "TEXT" && $3 != "00000000" { print $2 }'); do
                "$OBJCOPY" -O binary --only-section="$sec" "$T/bpf-$base-$cpu$opt.obj" "$OUT/verifier/bpf-$base-$cpu$opt-$sec"
            done
        done
    done
done

# Assembler and verifier: the conformance suite.
EXECMEM="${EXECMEM:-}"
if [ -z "$EXECMEM" ]; then
    (cd "$ROOT" && swift build --product execmem >/dev/null)
    EXECMEM="$(cd "$ROOT" && swift build --show-bin-path)/execmem"
fi
for f in "$CONFORMANCE"/*.data; do
    base="$(basename "${f%.data}")"
    awk '/^-- /{ on = ($0 == "-- asm") ; next } on' "$f" > "$OUT/assembler/$base.s"
    [ -s "$OUT/assembler/$base.s" ] || rm -f "$OUT/assembler/$base.s"
    [ -f "$OUT/assembler/$base.s" ] && "$EXECMEM" bpf asm "$OUT/assembler/$base.s" -o "$OUT/verifier/$base.bin" 2>/dev/null || true
done
rm -rf "$T"
for d in "$OUT"/*/; do printf '%-10s %4d files %8d bytes\n' "$(basename "$d")" "$(ls "$d" | wc -l)" "$(cat "$d"/* | wc -c)"; done
