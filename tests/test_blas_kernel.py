"""The core's ceilings and the OpenBLAS kernel: the peak probes bench/goals.py reports rows
against, and the one-line warning when OPENBLAS_CORETYPE forces a kernel with narrower vectors
than the CPU supports (rnnkit info, the benchmark headers)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rnnkit
from rnnkit import _core
from rnnkit._runtime import blas_kernel_warning


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_build_info_names_the_openblas_kernel_and_the_cpus_vector_isa():
    info = rnnkit.build_info()
    assert isinstance(info["blas_kernel"], str) and info["blas_kernel"]
    assert info["blas_kernel"] in info["blas"]
    assert info["cpu_vector_isa"] in ("avx512", "avx2", "avx", "sse2", "other")
    flags = _cpu_flags()
    if flags is not None and info["cpu_vector_isa"] != "other":
        assert ("avx512f" in flags) == (info["cpu_vector_isa"] == "avx512")


def test_the_peak_probes_run_and_say_what_they_measured():
    gflops, isa = _core._fma_peak_gflops(0.01)
    flags = _cpu_flags()
    if flags is None or not ({"avx2", "avx512f"} & flags):
        assert (gflops, isa) == (0.0, "")
    else:
        assert gflops > 0 and isa == ("avx512" if "avx512f" in flags else "avx2+fma")
    gflops, isa = _core._bf16_dot_peak_gflops(0.01)
    if flags is not None and "avx512_bf16" in flags:
        assert gflops > 0 and isa == "avx512_bf16"
    else:
        assert (gflops, isa) == (0.0, "")


def test_a_forced_narrower_kernel_is_one_line_saying_the_cost_and_the_fix():
    line = blas_kernel_warning("Haswell", "avx512", {"OPENBLAS_CORETYPE": "Haswell"})
    assert line is not None and "\n" not in line
    assert line.startswith("OpenBLAS runs its Haswell kernel (avx2) because OPENBLAS_CORETYPE=Haswell is set, "
                           "on a CPU with avx512")
    assert "at most 8/16 of the CPU's FMA width" in line and "unset OPENBLAS_CORETYPE" in line


@pytest.mark.parametrize("kernel, cpu, env", [
    ("Haswell", "avx512", {}),                                  # OpenBLAS chose it itself
    ("SkylakeX", "avx512", {"OPENBLAS_CORETYPE": "SkylakeX"}),  # forced, but the CPU's own width
    ("Haswell", "avx2", {"OPENBLAS_CORETYPE": "Haswell"}),
    ("Sandybridge", "avx2", {"OPENBLAS_CORETYPE": "Sandybridge"}),  # same vector width
    ("NoSuchCore", "avx512", {"OPENBLAS_CORETYPE": "NoSuchCore"}),  # a name rnnkit does not know
])
def test_no_warning_when_nothing_narrower_is_forced(kernel, cpu, env):
    assert blas_kernel_warning(kernel, cpu, env) is None


def test_rnnkit_info_prints_the_isa_and_the_warning_when_it_applies():
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
    proc = subprocess.run([sys.executable, "-m", "rnnkit", "info", "--repeats", "1", "--shape", "2", "1", "3", "4"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "  CPU ISA    " in proc.stdout and "OPENBLAS_CORETYPE=Haswell" in proc.stdout
    # The kernel the child's OpenBLAS chose under the variable (the BLAS line names it).
    kernel = proc.stdout.split("(kernel: ", 1)[1].split(")", 1)[0]
    expected = blas_kernel_warning(kernel, rnnkit.build_info()["cpu_vector_isa"], {"OPENBLAS_CORETYPE": "Haswell"})
    if expected is None:
        assert "warning:" not in proc.stdout
    else:
        assert f"  warning: {expected}" in proc.stdout
