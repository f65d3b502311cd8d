"""rnnkit: fast recurrent neural networks for Python.

The forward pass and backpropagation through time run in C++ (Eigen + OpenBLAS, optionally CUDA);
this package is a thin NumPy API over the compiled module ``rnnkit._core``.

    >>> import numpy as np, rnnkit
    >>> layer = rnnkit.RNN(input_size=8, hidden_size=16, seed=0)
    >>> y, h_n = layer(np.zeros((5, 3, 8), dtype=np.float32))
    >>> y.shape, h_n.shape
    ((5, 3, 16), (1, 3, 16))
"""

# Load libscipy_openblas.so globally before _core needs it. The module's RUNPATH finds it in a
# normal install; an editable install runs _core from the build tree, where only this works.
try:
    import scipy_openblas32 as _scipy_openblas32  # noqa: F401
except ImportError:  # a wheel repaired with the library bundled does not need the package
    pass

from . import _core
from . import convert, cuda, init, optim
from ._runtime import build_info, get_num_threads, set_num_threads
from .layers import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM
from .network import RNNNetwork
from .training import Trainer
from . import data
from .checkpoint import load_checkpoint, save_checkpoint

__version__: str = _core.__version__

__all__ = [
    "GRU", "LSTM", "LayerNormGRU", "LayerNormLSTM", "RNN", "RNNNetwork", "Trainer",
    "build_info", "convert", "cuda", "data", "load_checkpoint", "save_checkpoint", "get_num_threads", "init", "optim", "set_num_threads", "__version__",
]
