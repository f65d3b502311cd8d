"""``rnnkit.torch``: the import path of the PyTorch bridge, which lives in ``rnnkit.interop.torch``.

``import rnnkit.torch`` gives that module itself (this file puts it in its own place in
``sys.modules``), so ``rnnkit.torch.LSTM is rnnkit.interop.torch.LSTM``. It stays a file of its own
because torch is optional: ``import rnnkit`` never imports it.
"""

if __name__ == "torch":
    # This file was found as the top-level ``torch``: python/rnnkit itself is on sys.path (a script
    # run from inside it), where this module would shadow PyTorch and import itself.
    raise ImportError(
        f"{__file__} was imported as 'torch' because its directory is on sys.path, where it hides "
        "PyTorch: run scripts from outside python/rnnkit and import it as rnnkit.torch"
    )

import sys

from .interop import torch as _bridge

sys.modules[__name__] = _bridge
