"""rnnkit: fast recurrent neural networks for Python.

The forward pass and backpropagation through time run in C++ (Eigen + OpenBLAS, optionally CUDA);
this package is a thin NumPy API over the compiled module ``rnnkit._core``.

    >>> import numpy as np, rnnkit
    >>> layer = rnnkit.RNN(input_size=8, hidden_size=16, seed=0)
    >>> y, h_n = layer(np.zeros((5, 3, 8), dtype=np.float32))
    >>> y.shape, h_n.shape
    ((5, 3, 16), (1, 3, 16))
"""

import os as _os

import numpy as _np  # noqa: F401  (NumPy's own OpenBLAS reads its settings before ours is loaded)

# Load libscipy_openblas.so globally before _core needs it. The module's RUNPATH finds it in a
# normal install; an editable install runs _core from the build tree, where only this works.
# rnnkit calls its BLAS single-threaded (its own thread team splits the work), so the library is
# told to start no thread pool of its own: idle pool threads spin and take CPU from the team.
_saved_threads = _os.environ.get("OPENBLAS_NUM_THREADS")
_os.environ["OPENBLAS_NUM_THREADS"] = "1"
try:
    import scipy_openblas32 as _scipy_openblas32  # noqa: F401
except ImportError:  # a wheel repaired with the library bundled does not need the package
    pass
finally:
    if _saved_threads is None:
        del _os.environ["OPENBLAS_NUM_THREADS"]
    else:
        _os.environ["OPENBLAS_NUM_THREADS"] = _saved_threads

import sys as _sys

from . import _core
from . import cuda
from ._device import to_numpy
from ._runtime import build_info, empty_cache, get_deterministic, get_num_threads, set_deterministic, set_num_threads
from .interop import convert, onnx
from .layers import GRU, LSTM, RNN, IndRNN, LayerNormGRU, LayerNormLSTM, MinGRU, MinLSTM, Stepper
from .network import NetworkStepper, RNNNetwork
from .train import checkpoint, data, init, optim, training
from .train.checkpoint import load_checkpoint, save_checkpoint
from .train.training import Trainer

# The modules live by role (train/, interop/, app/); users import them by these names, as before
# the move: `import rnnkit.optim`, `from rnnkit.checkpoint import ...`. (rnnkit.torch has a file of
# its own, because importing it imports torch.)
for _name, _module in {"optim": optim, "init": init, "data": data, "checkpoint": checkpoint, "training": training,
                       "convert": convert, "onnx": onnx}.items():
    _sys.modules[f"{__name__}.{_name}"] = _module
del _name, _module

__version__: str = _core.__version__

__all__ = [
    "GRU", "IndRNN", "LSTM", "LayerNormGRU", "LayerNormLSTM", "MinGRU", "MinLSTM", "NetworkStepper", "RNN", "RNNNetwork", "Stepper", "Trainer",
    "build_info", "convert", "cuda", "data", "empty_cache", "get_deterministic", "get_num_threads", "init",
    "load_checkpoint", "onnx", "optim", "save_checkpoint", "set_deterministic", "set_num_threads", "to_numpy", "__version__",
]
