#!/usr/bin/env python3
"""Puts ExecMem's JIT beside uBPF's: reads compare.sh's key=value lines for uBPF and any number of
`execmem bench bpf --json` outputs (the minimum of each figure is taken), and prints, per program,
each JIT's time over native clang -O2 measured in the same process, their ratio, and compile times.
Usage: side_by_side.py UBPF_KV EXECMEM_JSON..."""
import json
import math
import sys


def kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v.strip('"')
    return out


ubpf = {d["program"]: d for d in map(kv, open(sys.argv[1]).read().splitlines()) if "program" in d}
best = {}
for path in sys.argv[2:]:
    for r in json.load(open(path)):
        key = (r["figure"], r["baseline"])
        old = best.get(key)
        if old is None or r["value"] < old["value"]:
            best[key] = r


def fig(name, what, baseline):
    return best.get((f"{name}: {what}", baseline))


rows, logs = [], {"safe": [], "unchecked": [], "ubpf": [], "vs": [], "vs_unchecked": [], "compile": [], "jit_only": []}
print("times in us; x native = time / native clang -O2 in the same process; ExecMem / uBPF = ratio of those")
fmt = "%-7s %10s %10s %10s %9s %9s %9s %11s %10s %10s %10s"
print(fmt % ("program", "ExecMem", "no checks", "uBPF JIT", "EM x nat", "uBPF x nat", "EM/uBPF", "EM/uBPF nc",
             "EM verify+", "EM JIT", "uBPF cmp"))
for name, u in ubpf.items():
    safe, nochecks, comp = fig(name, "JIT, every check on", "native clang -O2"), fig(name, "JIT, no bounds checks", "JIT, every check on"), \
        fig(name, "verify + JIT + install", "JIT + install alone")
    if not safe or "ubpf_jit_us" not in u or "native_clang_us" not in u:
        print(f"{name}: missing figures ({u.get('status', '?')})")
        continue
    em_x = safe["value"] / safe["baselineValue"]
    nc_x = nochecks["value"] / safe["baselineValue"]
    ub_x = float(u["ubpf_jit_us"]) / float(u["native_clang_us"])
    for k, v in (("safe", em_x), ("unchecked", nc_x), ("ubpf", ub_x), ("vs", em_x / ub_x), ("vs_unchecked", nc_x / ub_x),
                 ("compile", comp["value"] / float(u["ubpf_compile_us"])), ("jit_only", comp["baselineValue"] / float(u["ubpf_compile_us"]))):
        logs[k].append(math.log(v))
    print(fmt % (name, "%.2f" % safe["value"], "%.2f" % nochecks["value"], u["ubpf_jit_us"], "%.2f" % em_x, "%.2f" % ub_x,
                 "%.2f" % (em_x / ub_x), "%.2f" % (nc_x / ub_x), "%.1f" % comp["value"], "%.1f" % comp["baselineValue"], u["ubpf_compile_us"]))
g = {k: math.exp(sum(v) / len(v)) for k, v in logs.items() if v}
print()
print("geometric means over %d programs:" % len(logs["safe"]))
print("  ExecMem JIT, every check on:  %.2fx native, %.2fx uBPF's JIT" % (g["safe"], g["vs"]))
print("  ExecMem JIT, no bounds checks: %.2fx native, %.2fx uBPF's JIT" % (g["unchecked"], g["vs_unchecked"]))
print("  uBPF JIT (no checks):          %.2fx native" % g["ubpf"])
print("  compile: ExecMem verify + JIT + install %.2fx uBPF's load + compile; JIT + install alone %.2fx" % (g["compile"], g["jit_only"]))
