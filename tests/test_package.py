"""The package as a user meets it: import without torch, version, threads, build info, the main job."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

import rnnkit


def _run_python(code: str, env_update=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("RNNKIT_NUM_THREADS", None)
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_works_without_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch blocked by the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, rnnkit\n"
        "y, h = rnnkit.RNN(3, 4, seed=0)(np.ones((2, 1, 3), np.float32))\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok', y.shape)\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "ok (2, 1, 4)" in proc.stdout


def test_version_comes_from_the_package_metadata():
    assert rnnkit.__version__ == importlib.metadata.version("rnnkit")
    assert rnnkit.build_info()["version"] == rnnkit.__version__


def test_default_is_one_blas_thread_and_env_overrides():
    proc = _run_python("import rnnkit; print(rnnkit.get_num_threads())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
    proc = _run_python("import rnnkit; print(rnnkit.get_num_threads())", {"RNNKIT_NUM_THREADS": "2"})
    assert proc.stdout.strip() == "2"


def test_set_num_threads_round_trip():
    before = rnnkit.get_num_threads()
    try:
        rnnkit.set_num_threads(2)
        assert rnnkit.get_num_threads() == 2
    finally:
        rnnkit.set_num_threads(before)


def test_build_info_describes_the_build():
    info = rnnkit.build_info()
    assert "OpenBLAS" in info["blas"]
    assert info["num_threads"] == rnnkit.get_num_threads()
    assert isinstance(info["cuda_built"], bool)
    assert info["cuda_available"] == rnnkit.cuda.is_available()
    assert info["cuda_status"]  # always says why (or which device)


def test_cuda_reports_cleanly_when_unavailable():
    if rnnkit.cuda.is_available():
        pytest.skip("the CUDA backend is available here (a GPU, or the emulation build): the unavailable path cannot be observed")
    assert rnnkit.cuda.status()
    if not rnnkit.cuda.is_built():
        assert "RNNKIT_CUDA=1" in rnnkit.cuda.status()


def test_main_job_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "rnnkit", "info", "--shape", "5", "2", "3", "4", "--repeats", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"rnnkit {rnnkit.__version__}" in out
    for needle in ("BLAS", "threads", "CUDA", "forward", "backward"):
        assert needle in out, needle


def test_type_stubs_match_the_compiled_module():
    """python/rnnkit/_core.pyi declares every public name of _core (and no other); py.typed ships.
    The CUDA backend's names exist only in CUDA and emulation builds."""
    import ast
    import pathlib

    from rnnkit import _core

    package = pathlib.Path(rnnkit.__file__).parent
    assert (package / "py.typed").exists()
    tree = ast.parse((package / "_core.pyi").read_text())
    declared = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    public = {name for name in dir(_core) if not name.startswith("_")}
    cuda_only = {"DeviceArray", "to_device", "cuda_selftest_axpy", "cuda_set_persistent", "cuda_get_persistent",
                 "cuda_persistent_launches", "from_cuda_array_interface", "from_dlpack",
                 "cuda_memory_stats", "cuda_empty_cache", "cuda_set_stream", "cuda_current_stream",
                 "cuda_set_graphs", "cuda_get_graphs", "cuda_graph_stats", "cuda_clear_graph_cache",
                 "cuda_network_forward", "cuda_network_backward", "cuda_network_generate"}
    expected = {n for n in declared if not n.startswith("_")}
    if not rnnkit.cuda.is_built():
        expected -= cuda_only
    assert expected == public


def test_the_cell_table_is_the_compiled_cores():
    """One table of cells: the Python one (rnnkit._cells) lists the compiled module's cells, in its
    order, each by the name whose upper case is the module's mode."""
    import re

    from rnnkit import _cells, _core

    with pytest.raises(ValueError) as info:
        _core.StackConfig("NO_SUCH_CELL", 3, 4)
    assert re.findall(r"'([A-Z_]+)'", str(info.value).split("got")[0]) == [c.mode for c in _cells.CELLS.values()]
    for cell in _cells.CELLS.values():
        layer_class = getattr(rnnkit, cell.layer)
        layer = layer_class(3, 4, **cell.options)
        assert (layer.cell, layer.mode, layer._config.mode) == (cell.name, cell.name.upper(), cell.name.upper())


def test_old_module_paths_still_import():
    """The modules moved by role (train/, interop/, app/); the paths users import keep working."""
    import importlib

    for name in ("optim", "init", "data", "checkpoint", "training", "convert", "onnx"):
        module = importlib.import_module(f"rnnkit.{name}")
        assert module is getattr(rnnkit, name)
    from rnnkit.checkpoint import load_checkpoint  # noqa: F401
    from rnnkit.optim import Adam  # noqa: F401
