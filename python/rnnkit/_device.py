"""Where a layer's arrays live: the device names, and moving arrays between the host and the CUDA
backend's memory (``_core.DeviceArray``, present in CUDA and emulation builds only).

The layers stay thin: they ask here whether an argument is a device array, put host inputs on the
device, and check device arrays' dtype and shape with the same wording as ``_validate``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _core
from . import _validate as V

DEVICES = ("cpu", "cuda")
DeviceArray = getattr(_core, "DeviceArray", None)


def is_device_array(value: Any) -> bool:
    return DeviceArray is not None and isinstance(value, DeviceArray)


def _cuda_array_interface(value: Any):
    try:  # a torch CPU tensor raises here rather than lacking the attribute
        return getattr(value, "__cuda_array_interface__", None)
    except Exception:
        return None


def is_foreign_device_array(value: Any) -> bool:
    """Another library's array in CUDA memory (CuPy, a PyTorch CUDA tensor, Numba): one exposing
    ``__cuda_array_interface__``, or DLPack on a CUDA device (device type 2)."""
    if DeviceArray is None or isinstance(value, (np.ndarray, DeviceArray)):
        return False
    if _cuda_array_interface(value) is not None:
        return True
    try:
        return hasattr(value, "__dlpack__") and int(value.__dlpack_device__()[0]) == 2
    except Exception:
        return False


def as_device_array(value: Any):
    """``value`` as a DeviceArray without a copy: a DeviceArray as it is; an array exposing
    ``__cuda_array_interface__`` or ``__dlpack__`` as a view of its memory (kept alive by the view).
    NumPy arrays are host memory: ``rnnkit.to_device`` copies one."""
    if DeviceArray is None:
        raise RuntimeError("as_device_array: this rnnkit was built without the CUDA backend")
    if isinstance(value, DeviceArray):
        return value
    if isinstance(value, np.ndarray):
        raise TypeError("array: expected a CUDA array, got a numpy array (host memory: rnnkit.to_device copies "
                        "one to the device)")
    if _cuda_array_interface(value) is not None:
        return _core.from_cuda_array_interface(value)
    if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
        return _core.from_dlpack(value)
    raise TypeError(f"array: expected a CUDA array (an rnnkit DeviceArray, or one exposing __cuda_array_interface__ "
                    f"or __dlpack__), got {type(value).__name__}")


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


def read_in_place(name: str, value: Any, dtype: np.dtype):
    """Another library's CUDA array as a DeviceArray view (its dtype must be the layer's: a view is
    not converted); anything else as it is."""
    if not is_foreign_device_array(value):
        return value
    view = as_device_array(value)
    if view.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype.name}, got {view.dtype.name} (a CUDA array is read "
                        f"without a copy: convert it to {dtype.name} first)")
    return view


def device_float_array(name: str, value: Any, dtype: np.dtype):
    """An input of a CUDA layer: a DeviceArray of the layer's dtype as it is, another library's CUDA
    array (CuPy, PyTorch) read in place, or anything array-like converted on the host (as a CPU
    layer would) and copied to the device."""
    value = read_in_place(name, value, dtype)
    if is_device_array(value):
        return check_device_array(name, value, dtype)
    return to_device(V.as_float_array(name, value, dtype))


def device_list(label: str, arrays: Dict[str, Any], specs: Sequence[Tuple[str, Tuple[int, ...]]], dtype: np.dtype,
                owner: str) -> list:
    """A model's parameter or gradient arrays in spec order, each checked to be a DeviceArray of
    the model's dtype and its shape (owner: "layer" or "network", for the message)."""
    out = []
    for name, shape in specs:
        a = arrays.get(name)
        if not is_device_array(a):
            raise TypeError(f"{label}[{name!r}]: expected a CUDA array (the {owner} is on 'cuda'), got "
                            f"{type(a).__name__}")
        out.append(check_device_array(f"{label}[{name!r}]", a, dtype, shape))
    return out


def host_state_dict(params: Dict[str, Any], specs: Sequence[Tuple[str, Tuple[int, ...]]]) -> Dict[str, np.ndarray]:
    """Host copies of a model's parameters in spec order (device arrays copied to the host)."""
    return {name: params[name].numpy() if is_device_array(params[name]) else params[name].copy() for name, _ in specs}


def load_checked_params(params: Dict[str, Any], checked: Dict[str, np.ndarray],
                        specs: Sequence[Tuple[str, Tuple[int, ...]]], dtype: np.dtype) -> None:
    """Copies checked host arrays (V.check_state_dict) into a model's parameters, in place, where
    they live: into device arrays through the host, else as V.copy_into_params does."""
    if any(is_device_array(params[name]) for name in checked):
        for name, value in checked.items():
            params[name].copy_from_host(V.c_array(value, dtype))
        return
    V.copy_into_params(params, checked, dict(specs), dtype)
