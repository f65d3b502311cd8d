"""Where a layer's arrays live: the device names, and moving arrays between the host and the CUDA
backend's memory (``_core.DeviceArray``, present in CUDA and emulation builds only).

The layers stay thin: they ask here whether an argument is a device array, put host inputs on the
device, and check device arrays' dtype and shape with the same wording as ``_validate``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _core
from . import _validate as V

DEVICES = ("cpu", "cuda")
DeviceArray = getattr(_core, "DeviceArray", None)


def is_device_array(value: Any) -> bool:
    return DeviceArray is not None and isinstance(value, DeviceArray)


def check_device(name: str, device: Any) -> str:
    """'cpu' or 'cuda' ('cuda:0' is 'cuda': one device); 'cuda' only where the backend can run."""
    text = getattr(device, "type", device)  # a torch.device
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected 'cpu' or 'cuda', got {type(device).__name__} {device!r}")
    base, _, index = text.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or index != "0")):
        raise ValueError(f"{name}: expected 'cpu' or 'cuda' (or 'cuda:0'), got {device!r}")
    if base == "cuda":
        from . import cuda

        if not cuda.is_available():
            raise RuntimeError(f"{name}: CUDA is unavailable here: {cuda.status()}")
    return base


def to_numpy(value: Any) -> np.ndarray:
    """Any rnnkit array as a host ``numpy.ndarray``: a device array is copied to the host, a NumPy
    array is returned as it is, anything else goes through ``numpy.asarray``."""
    if is_device_array(value):
        return value.numpy()
    return np.asarray(value)


def to_device(arr: np.ndarray):
    return _core.to_device(V.c_array(arr))


def check_device_array(name: str, value: Any, dtype: np.dtype, shape: Optional[Tuple[int, ...]] = None,
                       ranks: Optional[Sequence[int]] = None, meaning: str = ""):
    """A DeviceArray argument of a CUDA layer: dtype, and shape or rank, as _validate words them."""
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype.name}, got {value.dtype.name}")
    if ranks is not None and value.ndim not in ranks:
        expected = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected a {expected} array {meaning}, got {value.ndim}-D with shape "
                         f"{V.shape_str(value.shape)}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        what = f" {meaning}" if meaning else ""
        raise ValueError(f"{name}: expected shape {V.shape_str(shape)}{what}, got {V.shape_str(value.shape)}")
    return value


def device_float_array(name: str, value: Any, dtype: np.dtype):
    """An input of a CUDA layer: a DeviceArray of the layer's dtype as it is, or anything array-like
    converted on the host (as a CPU layer would) and copied to the device."""
    if is_device_array(value):
        return check_device_array(name, value, dtype)
    return to_device(V.as_float_array(name, value, dtype))
