"""Input validation for the whole Python API, in one place.

Every public entry point checks its arguments here before anything reaches the compiled core.
A failed check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (right kind,
wrong value or shape) whose message names the argument and says what was expected and what was
got. Accepted arrays come back as C-contiguous NumPy arrays of the layer's dtype.

Dtype policy (documented in README.md): arrays of any real floating dtype (float16, float32,
float64) are accepted and converted to the layer's dtype; integer, boolean, complex, string and
object arrays are refused with ``TypeError``. Non-contiguous arrays (slices, transposes, negative
strides) are copied to contiguous memory.
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _core

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _type_name(value: Any) -> str:
    return type(value).__name__


# Largest size a constructor accepts: the BLAS (scipy-openblas32) takes 32-bit dimensions (and a
# hidden size near it could not be allocated anyway: W_hh alone would hold 2**62 elements).
MAX_SIZE = 2**31 - 1


def c_array(arr: Any, dtype: Any = None) -> np.ndarray:
    """``arr`` as a C-contiguous, aligned array (a copy only when needed). NumPy allows misaligned
    arrays (views at an odd byte offset of a buffer); the C++ core reads whole elements."""
    out = np.ascontiguousarray(arr, dtype=dtype)  # not np.require: ~1 us more per call (step() pays it)
    return out if out.flags.aligned else out.copy()


def check_size(name: str, value: Any) -> int:
    """A positive integer size up to MAX_SIZE (bool is refused even though it is an int)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive integer, got {_type_name(value)} {value!r}")
    if not 0 < value <= MAX_SIZE:
        raise ValueError(f"{name}: expected a positive integer <= {MAX_SIZE}, got {value}")
    return int(value)


def check_non_negative(name: str, value: Any) -> int:
    """A non-negative integer up to MAX_SIZE (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a non-negative integer, got {_type_name(value)} {value!r}")
    if not 0 <= value <= MAX_SIZE:
        raise ValueError(f"{name}: expected a non-negative integer <= {MAX_SIZE}, got {value}")
    return int(value)


def check_float(name: str, value: Any) -> float:
    """A finite real number (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {_type_name(value)} {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)


def check_positive_float(name: str, value: Any) -> float:
    v = check_float(name, value)
    if v <= 0:
        raise ValueError(f"{name}: expected a positive number, got {v}")
    return v


def check_probability(name: str, value: Any) -> float:
    """A probability in [0, 1]."""
    v = check_float(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {v}")
    return v


def check_lengths(name: str, value: Any, batch: int, steps: int, minimum: int = 1) -> np.ndarray:
    """One integer length per batch element, each in [minimum, steps] (0 for the layers: a
    sequence of length 0 ends in zeros; 1 for a network, which scores every sequence); returned as
    contiguous int64."""
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name}: expected a sequence of integers, got {_type_name(value)} ({exc})") from None
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype {arr.dtype.name}")
    if arr.shape != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},) (one length per batch element), got {shape_str(arr.shape)}")
    bad = np.flatnonzero((arr < minimum) | (arr > steps))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}]: expected a length in [{minimum}, {steps}], got {int(arr[i])}")
    return c_array(arr, np.int64)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {_type_name(value)} {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {list(choices)}, got {_type_name(value)} {value!r}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def check_seed(name: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected None or a non-negative integer, got {_type_name(value)} {value!r}")
    if value < 0:
        raise ValueError(f"{name}: expected None or a non-negative integer, got {value}")
    return int(value)


def resolve_dtype(value: Any) -> np.dtype:
    """The layer dtype: 'float32' or 'float64' (strings, NumPy types and dtypes all accepted)."""
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"dtype: expected 'float32' or 'float64', got {value!r}") from None
    if dt not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dt.name!r}")
    return dt


def as_float_array(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """`value` as a C-contiguous array of `dtype`; refuses non-floating input with TypeError."""
    if value is None:
        raise TypeError(f"{name}: expected an array, got None")
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:  # ragged lists, objects whose __array__ fails, ...
            raise TypeError(f"{name}: expected an array of floats, got {_type_name(value)} ({exc})") from None
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{name}: expected a floating-point array (float32 or float64), got dtype {arr.dtype.name}"
        )
    return c_array(arr, dtype)


def as_token_array(name: str, value: Any) -> np.ndarray:
    """Integer ids as a C-contiguous int64 array; refuses floats, bools and others with TypeError."""
    if value is None:
        raise TypeError(f"{name}: expected an array of integer ids, got None")
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name}: expected an array of integer ids, got {_type_name(value)} ({exc})") from None
    if arr.size == 0 and arr.dtype == np.float64:  # an empty list: no ids, not float ids
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer ids, got dtype {arr.dtype.name}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: expected ids that fit in int64, got {int(arr.max())}")
    return c_array(arr, np.int64)


def shape_str(shape: Iterable[int]) -> str:
    shape = tuple(shape)
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_shape(name: str, arr: np.ndarray, expected: Tuple[int, ...], meaning: str = "") -> None:
    if arr.shape != tuple(expected):
        what = f" {meaning}" if meaning else ""
        raise ValueError(f"{name}: expected shape {shape_str(expected)}{what}, got {shape_str(arr.shape)}")


def check_rank(name: str, arr: np.ndarray, ranks: Sequence[int], meaning: str) -> None:
    if arr.ndim not in ranks:
        expected = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected a {expected} array {meaning}, got {arr.ndim}-D with shape {shape_str(arr.shape)}")


def check_not_empty(name: str, arr: np.ndarray, labels: Sequence[str]) -> None:
    for size, label in zip(arr.shape, labels):
        if size == 0:
            raise ValueError(f"{name}: expected {label} >= 1, got an empty array of shape {shape_str(arr.shape)}")


def zero_arrays(label: str, arrays: Mapping[str, np.ndarray]) -> None:
    """zero_grad's write: every array is checked writable before the first is zeroed."""
    check_writable(label, arrays)
    for a in arrays.values():
        a.fill(0)


def check_writable(label: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Arrays rnnkit writes into in place (gradients, parameters): refused before any write."""
    device_array = getattr(_core, "DeviceArray", None)
    for name, a in arrays.items():
        if device_array is not None and isinstance(a, device_array):
            continue  # device memory (CUDA builds) is always writable
        if not getattr(getattr(a, "flags", None), "writeable", False):
            raise ValueError(f"{label}[{name!r}]: expected a writable array, got "
                             f"{'a read-only one' if isinstance(a, np.ndarray) else type(a).__name__}")


def copy_into_params(params: Dict[str, np.ndarray], checked: Dict[str, np.ndarray],
                     specs: Dict[str, Tuple[int, ...]], dtype: np.dtype) -> None:
    """load_state_dict's write: every destination in ``params`` is checked (owned, writable, right
    shape and dtype) before the first copy, so a refused load changes nothing."""
    for name in checked:
        check_owned_array(f"params[{name!r}]", params.get(name), specs[name], dtype, writable=True)
    for name, value in checked.items():
        np.copyto(params[name], value)


def check_owned_array(name: str, arr: Any, shape: Tuple[int, ...], dtype: np.dtype, writable: bool) -> np.ndarray:
    """A parameter or gradient array the layer hands to C++ as is (no conversion, no copy):
    it must be an ndarray of exactly this dtype and shape, C-contiguous, aligned (and writable for
    grads)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {_type_name(arr)}")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype.name}, got {arr.dtype.name}")
    check_shape(name, arr, shape)
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got a non-contiguous view")
    if not arr.flags.aligned:
        raise ValueError(f"{name}: expected an aligned array, got a view at a misaligned address")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name}: expected a writable array, got a read-only one")
    return arr


def check_state_dict(
    name: str, state: Any, expected: Mapping[str, Tuple[int, ...]], dtype: np.dtype
) -> dict:
    """Validates a whole state dict before anything is copied: exact key set, float arrays of the
    right shapes. Returns {key: array of `dtype`}."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{name}: expected a mapping of parameter name to array, got {_type_name(state)}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise ValueError(f"{name}: expected keys {list(expected)}, got {'; '.join(parts)}")
    out = {}
    for key, shape in expected.items():
        arr = as_float_array(f"{name}[{key!r}]", state[key], dtype)
        check_shape(f"{name}[{key!r}]", arr, shape)
        out[key] = arr
    return out


# ---- recurrent states ------------------------------------------------------------------------
# Every API takes a recurrent state the same way: one array h [L*D, N, P] (L*D = num_layers *
# num_directions, P = proj_size or hidden_size; [L*D, P] for one unbatched sequence), or for cells
# with a cell state a tuple (h, c) whose c is [L*D, N, hidden_size]. Each entry is then checked
# by the caller's own rule for its kind of array (NumPy: converted; torch: checked as it is).
def split_state(name: str, value: Any, has_cell_state: bool, owner: str, pair: Tuple[str, str] = ("h0", "c0"),
                kind: Tuple[str, str] = ("an array", "arrays")) -> Tuple[Any, Any]:
    """The (h, c) entries of a state argument (c is None for cells without a cell state);
    TypeError naming `name` when it is not shaped as `owner`'s state. `kind`: the entries' kind,
    singular with its article and plural (arrays, tensors)."""
    one, many = kind
    if has_cell_state:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"{name}: expected a tuple ({pair[0]}, {pair[1]}) of {many} for {owner}, "
                            f"got {_type_name(value)}")
        h, c = value
        if h is None or c is None:
            raise TypeError(f"{name}: expected both {pair[0]} and {pair[1]} as {many} in the "
                            f"({pair[0]}, {pair[1]}) tuple, got None")
        return h, c
    if isinstance(value, tuple):
        raise TypeError(f"{name}: expected {one} for {owner}, got a tuple")
    return value, None


def state_meaning(width_name: str, unbatched: bool = False) -> str:
    """What a state entry's shape means, for its shape error."""
    if unbatched:
        return f"[num_layers*num_directions, {width_name}] for unbatched 2-D input"
    return f"[num_layers*num_directions, N, {width_name}]"


# ---- check_finite mode ---------------------------------------------------------------------------
# Without it, NaN and Inf propagate as IEEE arithmetic makes them (as in PyTorch): a non-finite
# input reaches exactly the outputs that depend on it. With ``model.check_finite = True`` the model
# scans what goes in and comes out of each call (a pass over the arrays, small next to the
# recurrence) and stops at the first non-finite value: ValueError for an input, FloatingPointError
# for a value the computation produced.
def check_finite_input(name: str, arr: Optional[np.ndarray]) -> None:
    """ValueError naming the first non-finite entry of an input (check_finite mode)."""
    if arr is None or np.isfinite(arr).all():
        return
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    raise ValueError(f"{name}: expected finite values (check_finite is on), got {arr[index]} at index {index}")


def first_nonfinite_step(arr_tm: np.ndarray, last: bool = False) -> Optional[Tuple[int, int]]:
    """(t, n) of the first (or, with ``last``, the latest) time step of a time-major ``[T, N, ...]``
    array holding a non-finite value, and the first batch element there; None if all are finite."""
    T, N = arr_tm.shape[0], arr_tm.shape[1]
    bad = ~np.isfinite(arr_tm.reshape(T, N, -1)).all(axis=2)
    steps = np.flatnonzero(bad.any(axis=1))
    if steps.size == 0:
        return None
    t = int(steps[-1] if last else steps[0])
    return t, int(np.flatnonzero(bad[t])[0])
