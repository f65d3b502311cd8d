"""ptxas' report of a CUDA build, one line per kernel: registers, stack frame, spills.

Reads a verbose build log (nvcc with -Xptxas=-v, as CMakeLists.txt asks) and prints every sm_90
kernel, demangled (c++filt when present), with its registers and spill bytes. Exits 1 when a
pointwise, persistent or one-lane row kernel spills (MUST_NOT_SPILL; the CUDA issue's rule), or when the log
holds no report at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys


# The kernels of every step: the cells' pointwise kernels, the persistent forward, and the LayerNorm
# row kernels with one lane per thread (rows up to 1024 wide). Wider rows (2-8 lanes a thread) hold
# several rows of lanes in registers and may spill; the report shows by how much.
MUST_NOT_SPILL = re.compile(r"Pointwise|PersistentForward|Rows<[^<>]*, 1>")

def demangle(names):
    if not names or shutil.which("c++filt") is None:
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def short(name):
    # rnnkit::cuda::run_body<rnnkit::cuda::ForwardPointwise<rnnkit::LSTMCell, float, (rnnkit::cuda::Stage)0> >(...)
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"^rnnkit::cuda::run_body<(.*)>\(.*\)$", r"\1", name)
    return name.replace("rnnkit::cuda::", "").replace("rnnkit::", "").replace("(anonymous namespace)::", "")


def main(path):
    text = open(path, errors="replace").read()
    kernels = []
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if m:
            current = {"mangled": m.group(1), "arch": m.group(2)}
            kernels.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"], current["spill_st"], current["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
    if not kernels:
        print("ptxas_report: no ptxas report in the log (built without -Xptxas=-v?)", file=sys.stderr)
        return 1
    for k, name in zip(kernels, demangle([k["mangled"] for k in kernels])):
        k["name"] = short(name)
    print(f"{'registers':>9} {'stack':>5} {'spill st/ld':>11}  kernel ({len(kernels)}, {kernels[0]['arch']})")
    bad = []
    for k in sorted(kernels, key=lambda k: k["name"]):
        spills = k.get("spill_st", 0) + k.get("spill_ld", 0)
        print(f"{k.get('registers', '?'):>9} {k.get('stack', '?'):>5} {k.get('spill_st', '?'):>5}/{k.get('spill_ld', '?'):<5}  {k['name']}")
        if MUST_NOT_SPILL.search(k["name"]) and spills > 0:
            bad.append(k["name"])
    if bad:
        print(f"ptxas_report: {len(bad)} kernels that must not spill do: {bad}", file=sys.stderr)
        return 1
    print("ptxas_report: no pointwise, persistent or one-lane LayerNorm row kernel spills")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
