"""Parameter initialisers for the recurrent layers (the ``init=`` and ``forget_bias=`` options).

Schemes (``init=`` takes one name, or ``"xavier+orthogonal"`` to combine the two that touch
different weights):

``"default"``
    PyTorch's: every weight and bias U(-1/sqrt(H), 1/sqrt(H)).
``"xavier"``
    Input weights ``weight_ih`` Xavier/Glorot-uniform per gate block:
    U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)), fan_in = the layer's input width,
    fan_out = H. Everything else as ``"default"``.
``"orthogonal"``
    Recurrent weights ``weight_hh``: each gate block [H, P] a (semi-)orthogonal matrix times
    ``gain`` (QR of a Gaussian matrix, signs fixed so the result is uniformly distributed).
    Everything else as ``"default"``.
``"identity"``
    The IRNN recipe (Le, Jaitly & Hinton 2015) for ReLU RNNs: each recurrent gate block is
    ``gain`` times the identity, every bias 0; input weights as ``"default"``.

LayerNorm gains start at 1 and LayerNorm biases at 0 under every scheme.

``forget_bias`` (LSTM cells): sets ``bias_ih``'s forget-gate block to the value and ``bias_hh``'s to
0, so the forget gate's total bias is exactly ``forget_bias`` (1.0 is the usual choice).

Draws come from one ``numpy.random.Generator``: first the default init of every parameter in
state_dict order, then the scheme's replacements in the same order, so a seed reproduces a layer.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

SCHEMES = ("default", "xavier", "orthogonal", "identity")


def parse_scheme(init: object) -> Tuple[str, ...]:
    """The set of schemes an ``init=`` value names; raises TypeError/ValueError otherwise."""
    if not isinstance(init, str):
        raise TypeError(f"init: expected one of {list(SCHEMES)} or 'xavier+orthogonal', got {type(init).__name__} {init!r}")
    parts = tuple(p.strip() for p in init.split("+"))
    if any(p not in SCHEMES for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"init: expected one of {list(SCHEMES)} or 'xavier+orthogonal', got {init!r}")
    if len(parts) > 1 and set(parts) != {"xavier", "orthogonal"}:
        raise ValueError(f"init: only 'xavier' and 'orthogonal' combine (they set different weights), got {init!r}")
    return parts


def orthogonal(rng: np.random.Generator, rows: int, cols: int, gain: float) -> np.ndarray:
    """A rows x cols matrix with orthonormal rows or columns (whichever are fewer), times gain."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # makes the distribution uniform (Haar)
    if rows < cols:
        q = q.T
    return gain * q


def initialise(
    specs: Sequence[Tuple[str, Tuple[int, ...]]],
    hidden_size: int,
    gates: int,
    dtype: np.dtype,
    rng: np.random.Generator,
    scheme: Tuple[str, ...],
    gain: float,
    forget_bias: Optional[float],
) -> Dict[str, np.ndarray]:
    """Fresh parameters for the given (name, shape) specs."""
    H = hidden_size
    bound = 1.0 / np.sqrt(H)
    params: Dict[str, np.ndarray] = {}
    for name, shape in specs:
        if name.startswith("ln_"):
            params[name] = np.ones(shape) if "_weight_" in name else np.zeros(shape)
        elif name.startswith("weight_hh") and len(shape) == 1:
            params[name] = rng.uniform(0.0, 1.0, size=shape)  # IndRNN's u, as Li et al. initialise it
        else:
            params[name] = rng.uniform(-bound, bound, size=shape)
    for name, shape in specs:
        p = params[name]
        if name.startswith("weight_ih") and "xavier" in scheme:
            a = gain * np.sqrt(6.0 / (shape[1] + H))
            params[name] = rng.uniform(-a, a, size=shape)
        elif name.startswith("weight_hh") and len(shape) == 1:
            continue  # IndRNN's u: no matrix scheme applies
        elif name.startswith("weight_hh") and "orthogonal" in scheme:
            params[name] = np.concatenate([orthogonal(rng, H, shape[1], gain) for _ in range(gates)])
        elif name.startswith("weight_hh") and "identity" in scheme:
            params[name] = np.concatenate([gain * np.eye(H, shape[1]) for _ in range(gates)])
        elif name.startswith("bias_") and "identity" in scheme:
            p[:] = 0.0
    if forget_bias is not None:
        for name in params:
            if name.startswith("bias_ih"):
                params[name][H:2 * H] = forget_bias
            elif name.startswith("bias_hh"):
                params[name][H:2 * H] = 0.0
    return {name: np.ascontiguousarray(v, dtype=dtype) for name, v in params.items()}
