"""The README's Python examples run as written (each in its own temporary directory: they may
write files, as the ONNX export does)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert _python_blocks(), "README.md has no python example"


@pytest.mark.parametrize("block", _python_blocks(), ids=lambda b: b.strip().splitlines()[0][:40])
def test_python_example_runs(block, tmp_path, monkeypatch):
    if '.to("cuda")' in block:
        import rnnkit

        if not rnnkit.cuda.is_available():
            pytest.skip(f"the CUDA example needs the CUDA backend: {rnnkit.cuda.status()}")
    if re.search(r"^import (torch|rnnkit\.torch)\b", block, flags=re.M):
        pytest.importorskip("torch", reason="PyTorch is not installed: the rnnkit.torch example is skipped")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {})
