"""Bad input: every mistake ends in TypeError/ValueError naming the argument, never a crash.

Each case checks the exception type and that the message names the argument (and, where it
matters, what was expected).
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import _core


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(input_size=0, hidden_size=4), ValueError, r"input_size: expected a positive integer <= \d+, got 0"),
        (dict(input_size=-3, hidden_size=4), ValueError, "input_size"),
        (dict(input_size=2**31, hidden_size=4), ValueError,
         r"input_size: expected a positive integer <= 2147483647, got 2147483648"),
        (dict(input_size=2.5, hidden_size=4), TypeError, "input_size"),
        (dict(input_size="3", hidden_size=4), TypeError, "input_size"),
        (dict(input_size=True, hidden_size=4), TypeError, "input_size"),
        (dict(input_size=3, hidden_size=0), ValueError, "hidden_size"),
        (dict(input_size=3, hidden_size=None), TypeError, "hidden_size"),
        (dict(input_size=3, hidden_size=4, nonlinearity="sigmoid"), ValueError, "nonlinearity: expected one of"),
        (dict(input_size=3, hidden_size=4, nonlinearity=None), TypeError, "nonlinearity"),
        (dict(input_size=3, hidden_size=4, dtype="int32"), ValueError, "dtype: expected 'float32' or 'float64'"),
        (dict(input_size=3, hidden_size=4, dtype="float16"), ValueError, "dtype"),
        (dict(input_size=3, hidden_size=4, dtype="banana"), TypeError, "dtype"),
        (dict(input_size=3, hidden_size=4, bias="yes"), TypeError, "bias"),
        (dict(input_size=3, hidden_size=4, batch_first=1), TypeError, "batch_first"),
        (dict(input_size=3, hidden_size=4, seed=-1), ValueError, "seed"),
        (dict(input_size=3, hidden_size=4, seed=1.5), TypeError, "seed"),
    ],
)
def test_constructor_rejects(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        rnnkit.RNN(**kwargs)


@pytest.fixture
def layer():
    return rnnkit.RNN(3, 4, seed=0)


GOOD_X = np.zeros((5, 2, 3), np.float32)


@pytest.mark.parametrize(
    "x, exc, pattern",
    [
        (np.zeros(3, np.float32), ValueError, r"x: expected a 2-D or 3-D array"),
        (np.zeros((1, 5, 2, 3), np.float32), ValueError, r"x: expected a 2-D or 3-D array"),
        (np.zeros((5, 2, 4), np.float32), ValueError, r"x: expected input_size 3 .* got 4"),
        (np.zeros((5, 2, 3), np.int64), TypeError, r"x: expected a floating-point array .* got dtype int64"),
        (np.zeros((5, 2, 3), bool), TypeError, r"x: .* got dtype bool"),
        (np.zeros((5, 2, 3), np.complex64), TypeError, r"x: .* got dtype complex64"),
        (np.zeros((5, 2, 3), object), TypeError, r"x: .* got dtype object"),
        ("not an array", TypeError, r"x: .* got dtype"),
        ([[1.0, 2.0], [3.0]], TypeError, r"x: expected an array"),
        (None, TypeError, r"x: expected an array, got None"),
        (np.zeros((0, 2, 3), np.float32), ValueError, r"x: expected sequence length T >= 1"),
        (np.zeros((5, 0, 3), np.float32), ValueError, r"x: expected batch size N >= 1"),
    ],
    ids=lambda v: getattr(v, "shape", v) if not isinstance(v, type) else v.__name__,
)
def test_forward_rejects_x(layer, x, exc, pattern):
    with pytest.raises(exc, match=pattern):
        layer(x)


@pytest.mark.parametrize(
    "h0, exc, pattern",
    [
        (np.zeros((1, 3, 4), np.float32), ValueError, r"h0: expected shape \(1, 2, 4\) .* got \(1, 3, 4\)"),
        (np.zeros((1, 2, 5), np.float32), ValueError, r"h0: expected shape \(1, 2, 4\)"),
        (np.zeros((2, 4), np.float32), ValueError, r"h0: expected shape \(1, 2, 4\)"),
        (np.zeros((2, 2, 4), np.float32), ValueError, r"h0: expected shape"),
        (np.zeros((1, 2, 4), np.int32), TypeError, r"h0: expected a floating-point array"),
    ],
)
def test_forward_rejects_h0(layer, h0, exc, pattern):
    with pytest.raises(exc, match=pattern):
        layer(GOOD_X, h0)


def test_batch_first_names_the_layout():
    layer = rnnkit.RNN(3, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"\[N, T, input_size\]"):
        layer(np.zeros(3, np.float32))


def test_backward_without_forward_is_a_clear_error(layer):
    with pytest.raises(RuntimeError, match="backward: expected a preceding forward"):
        layer.backward(np.zeros((5, 2, 4), np.float32))


def test_backward_twice_is_a_clear_error(layer):
    layer(GOOD_X)
    layer.backward(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(RuntimeError, match="backward"):
        layer.backward(np.zeros((5, 2, 4), np.float32))


@pytest.mark.parametrize(
    "dy, dh_n, exc, pattern",
    [
        (np.zeros((5, 2, 5), np.float32), None, ValueError, r"dy: expected shape \(5, 2, 4\)"),
        (np.zeros((2, 5, 4), np.float32), None, ValueError, r"dy: expected shape \(5, 2, 4\)"),
        (np.zeros((5, 2, 4), np.int64), None, TypeError, r"dy: expected a floating-point array"),
        (None, np.zeros((1, 3, 4), np.float32), ValueError, r"dh_n: expected shape \(1, 2, 4\)"),
        (None, None, ValueError, r"backward: expected dy, dh_n or both"),
    ],
)
def test_backward_rejects(layer, dy, dh_n, exc, pattern):
    layer(GOOD_X)
    with pytest.raises(exc, match=pattern):
        layer.backward(dy, dh_n)
    # A rejected call leaves the forward's cache usable.
    dx, dh0 = layer.backward(np.zeros((5, 2, 4), np.float32))
    assert dx.shape == GOOD_X.shape


def test_compute_dx_must_be_bool(layer):
    layer(GOOD_X)
    with pytest.raises(TypeError, match="compute_dx"):
        layer.backward(np.zeros((5, 2, 4), np.float32), compute_dx="no")


@pytest.mark.parametrize(
    "mutate, exc, pattern",
    [
        (lambda l: l.params.__setitem__("weight_ih_l0", np.zeros((4, 3), np.float64)), TypeError,
         r"params\['weight_ih_l0'\]: expected dtype float32, got float64"),
        (lambda l: l.params.__setitem__("weight_hh_l0", np.zeros((4, 5), np.float32)), ValueError,
         r"params\['weight_hh_l0'\]: expected shape \(4, 4\)"),
        (lambda l: l.params.__setitem__("bias_ih_l0", [0.0] * 4), TypeError,
         r"params\['bias_ih_l0'\]: expected a numpy.ndarray, got list"),
        (lambda l: l.params.pop("bias_hh_l0"), TypeError, r"params\['bias_hh_l0'\]: expected a numpy.ndarray, got NoneType"),
        (lambda l: l.params.__setitem__("weight_hh_l0", np.zeros((4, 8), np.float32)[:, ::2]), ValueError,
         r"params\['weight_hh_l0'\]: expected a C-contiguous array"),
    ],
)
def test_forward_rejects_broken_params(layer, mutate, exc, pattern):
    mutate(layer)
    with pytest.raises(exc, match=pattern):
        layer(GOOD_X)


def test_backward_rejects_read_only_grads(layer):
    layer(GOOD_X)
    layer.grads["weight_hh_l0"].flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\['weight_hh_l0'\]: expected a writable array"):
        layer.backward(np.zeros((5, 2, 4), np.float32))


@pytest.mark.parametrize(
    "state, exc, pattern",
    [
        ({}, ValueError, r"state_dict: expected keys .* missing keys"),
        ("weights", TypeError, r"state_dict: expected a mapping"),
    ],
)
def test_load_state_dict_rejects(layer, state, exc, pattern):
    with pytest.raises(exc, match=pattern):
        layer.load_state_dict(state)


def test_load_state_dict_rejects_extra_and_wrong_shapes(layer):
    good = layer.state_dict()
    extra = dict(good, weight_ih_l1=np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_ih_l1'\]"):
        layer.load_state_dict(extra)
    wrong = dict(good, weight_hh_l0=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\]: expected shape \(4, 4\), got \(4, 3\)"):
        layer.load_state_dict(wrong)
    ints = dict(good, bias_ih_l0=np.zeros(4, np.int64))
    with pytest.raises(TypeError, match=r"state_dict\['bias_ih_l0'\]: expected a floating-point array"):
        layer.load_state_dict(ints)


def test_failed_load_state_dict_changes_nothing(layer):
    before = layer.state_dict()
    bad = {k: np.ones_like(v) for k, v in before.items()}
    bad["bias_hh_l0"] = np.ones(7, np.float32)
    with pytest.raises(ValueError):
        layer.load_state_dict(bad)
    for k, v in before.items():
        np.testing.assert_array_equal(layer.params[k], v)


def test_set_num_threads_rejects():
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        rnnkit.set_num_threads(0)
    with pytest.raises(TypeError, match="n: expected a positive integer"):
        rnnkit.set_num_threads(1.5)


# ---- the compiled module's own checks (for callers that bypass the Python layer) -----------------
CFG = _core.StackConfig("RNN_TANH", 3, 4)
W_IH = np.zeros((4, 3), np.float32)
W_HH = np.zeros((4, 4), np.float32)
B = np.zeros(4, np.float32)
PARAMS = [W_IH, W_HH, B, B]


@pytest.mark.parametrize(
    "args, exc, pattern",
    [
        ((CFG, PARAMS, GOOD_X.astype(np.int32), None, None, None, False, 0), TypeError, "x: expected dtype"),
        ((CFG, [W_IH.astype(np.float64), W_HH, B, B], GOOD_X, None, None, None, False, 0), TypeError,
         r"params\[0\] \(weight_ih_l0\): expected dtype float32"),
        ((CFG, [np.zeros((4, 5), np.float32), W_HH, B, B], GOOD_X, None, None, None, False, 0), ValueError,
         r"params\[0\] \(weight_ih_l0\) shape: expected \(4, 3\)"),
        ((CFG, [W_IH, W_HH, B], GOOD_X, None, None, None, False, 0), ValueError, "params list length: expected 4, got 3"),
        ((CFG, [W_IH, W_HH, B, [0.0] * 4], GOOD_X, None, None, None, False, 0), TypeError, r"params\[3\] \(bias_hh_l0\): expected a numpy array"),
        ((CFG, PARAMS, GOOD_X, np.zeros((1, 3, 4), np.float32), None, None, False, 0), ValueError, r"h0 shape: expected \(1, 2, 4\)"),
        ((CFG, PARAMS, GOOD_X, None, np.zeros((1, 2, 4), np.float32), None, False, 0), ValueError, "c0: expected None"),
        ((CFG, PARAMS, GOOD_X[::-1], None, None, None, False, 0), ValueError, "x: expected a C-contiguous array"),
        ((CFG, PARAMS, np.zeros((0, 2, 3), np.float32), None, None, None, False, 0), ValueError, "T >= 1"),
        ((CFG, PARAMS, np.zeros((5, 2), np.float32), None, None, None, False, 0), ValueError, "x: expected a 3-D array"),
        ((CFG, PARAMS, GOOD_X, None, None, np.array([5, 6]), False, 0), ValueError, r"lengths\[1\]: expected a length in \[0, 5\], got 6"),
        ((CFG, PARAMS, GOOD_X, None, None, np.array([5, 5], np.int32), False, 0), TypeError, "lengths: expected dtype int64"),
    ],
)
def test_core_forward_rejects(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _core.forward(*args)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(mode="LSTMX", input_size=3, hidden_size=4), "mode: expected one of"),
        (dict(mode="GRU", input_size=3, hidden_size=4, proj_size=2), "proj_size: expected 0"),
        (dict(mode="LSTM", input_size=3, hidden_size=4, proj_size=4), "proj_size: expected less than hidden_size"),
        (dict(mode="LSTM", input_size=3, hidden_size=4, num_layers=0), "num_layers"),
        (dict(mode="LSTM", input_size=3, hidden_size=4, dropout=1.5), "dropout"),
        (dict(mode="LSTM", input_size=0, hidden_size=4), "input_size"),
    ],
)
def test_core_config_rejects(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _core.StackConfig(**kwargs)


def test_core_backward_rejects_wrong_grad_buffers():
    _, _, _, cache = _core.forward(CFG, PARAMS, GOOD_X, None, None, None, True, 0)
    dy = np.zeros((5, 2, 4), np.float32)
    grads = [W_IH.copy(), np.zeros((4, 5), np.float32), B.copy(), B.copy()]
    with pytest.raises(ValueError, match=r"grads\[1\] \(weight_hh_l0\) shape: expected \(4, 4\)"):
        _core.backward(cache, dy, None, None, grads, True)
    read_only = W_HH.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[1\] \(weight_hh_l0\): expected a writable array"):
        _core.backward(cache, dy, None, None, [W_IH.copy(), read_only, B.copy(), B.copy()], True)
    with pytest.raises(ValueError, match="dc_n: expected None"):
        _core.backward(cache, dy, None, np.zeros((1, 2, 4), np.float32), [g.copy() for g in PARAMS], True)


def test_impossible_allocation_is_a_memory_error_naming_its_size():
    # Outputs and buffers of T*N*H floats far beyond this machine's memory, from small inputs
    # (x is [T*N, 1, 1]): refused up front, before any of it is allocated or touched.
    import os

    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    H = 4096
    rows = 4 * physical // (H * 4) + 1
    layer = rnnkit.RNN(1, H, bias=False, seed=0)
    x = np.zeros((rows, 1, 1), np.float32)
    with pytest.raises(MemoryError, match=r"rnnkit could not allocate \d+ bytes for a forward call"):
        layer(x)


# ---- the full layer's options -------------------------------------------------------------------
@pytest.mark.parametrize(
    "lengths, exc, pattern",
    [
        ([5, 6], ValueError, r"lengths\[1\]: expected a length in \[0, 5\], got 6"),
        ([-1, 5], ValueError, r"lengths\[0\]: expected a length in \[0, 5\], got -1"),
        ([5], ValueError, r"lengths: expected shape \(2,\) \(one length per batch element\), got \(1,\)"),
        ([5, 4, 3], ValueError, r"lengths: expected shape \(2,\)"),
        ([[5, 4]], ValueError, r"lengths: expected shape \(2,\)"),
        ([5.0, 4.0], TypeError, "lengths: expected integers, got dtype float64"),
        ([True, True], TypeError, "lengths: expected integers, got dtype bool"),
        (["5", "4"], TypeError, "lengths: expected integers"),
    ],
)
def test_forward_rejects_lengths(lengths, exc, pattern):
    layer = rnnkit.GRU(3, 4, num_layers=2, bidirectional=True)
    with pytest.raises(exc, match=pattern):
        layer(GOOD_X, None, lengths)


def test_lengths_with_unbatched_input_is_refused():
    with pytest.raises(ValueError, match="lengths: expected None for an unbatched"):
        rnnkit.LSTM(3, 4)(np.zeros((5, 3), np.float32), None, [5])


@pytest.mark.parametrize(
    "h0, exc, pattern",
    [
        (np.zeros((4, 2, 4), np.float32), TypeError, r"h0: expected a tuple \(h0, c0\) of arrays for LSTM, got ndarray"),
        ((np.zeros((4, 2, 4), np.float32),), TypeError, r"h0: expected a tuple \(h0, c0\)"),
        ((np.zeros((4, 2, 4), np.float32), None), TypeError, "expected both h0 and c0"),
        ((np.zeros((2, 2, 4), np.float32), np.zeros((4, 2, 4), np.float32)), ValueError,
         r"h0: expected shape \(4, 2, 4\) \[num_layers\*num_directions, N, hidden_size\], got \(2, 2, 4\)"),
        ((np.zeros((4, 2, 4), np.float32), np.zeros((4, 3, 4), np.float32)), ValueError,
         r"c0: expected shape \(4, 2, 4\)"),
    ],
)
def test_lstm_rejects_state(h0, exc, pattern):
    layer = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True)
    with pytest.raises(exc, match=pattern):
        layer(GOOD_X, h0)


def test_projected_lstm_names_proj_size_in_state_errors():
    layer = rnnkit.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"h0: expected shape \(1, 2, 2\) \[num_layers\*num_directions, N, proj_size\]"):
        layer(GOOD_X, (np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32)))


def test_gru_refuses_a_state_tuple():
    with pytest.raises(TypeError, match="h0: expected an array for GRU, got a tuple"):
        rnnkit.GRU(3, 4)(GOOD_X, (np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32)))


def test_lstm_backward_state_gradients():
    layer = rnnkit.LSTM(3, 4)
    layer(GOOD_X)
    with pytest.raises(ValueError, match=r"dc_n: expected shape \(1, 2, 4\)"):
        layer.backward(None, (None, np.zeros((1, 2, 5), np.float32)))
    with pytest.raises(TypeError, match=r"dh_n: expected \(dh_n, dc_n\)"):
        layer.backward(None, (None, None, None))
    with pytest.raises(ValueError, match="backward: expected dy, dh_n or both"):
        layer.backward(None, (None, None))
    dx, (dh0, dc0) = layer.backward(None, (None, np.ones((1, 2, 4), np.float32)))
    assert dx.shape == GOOD_X.shape and dh0.shape == dc0.shape == (1, 2, 4)


@pytest.mark.parametrize(
    "make, exc, pattern",
    [
        (lambda: rnnkit.LSTM(3, 4, num_layers=0), ValueError, "num_layers: expected a positive integer"),
        (lambda: rnnkit.LSTM(3, 4, dropout=1.5), ValueError, r"dropout: expected a probability in \[0, 1\], got 1.5"),
        (lambda: rnnkit.LSTM(3, 4, num_layers=2, dropout="0.1"), TypeError, "dropout"),
        (lambda: rnnkit.LSTM(3, 4, proj_size=4), ValueError, r"proj_size: expected less than hidden_size \(4\), got 4"),
        (lambda: rnnkit.LSTM(3, 4, proj_size=-1), ValueError, "proj_size: expected a non-negative integer"),
        (lambda: rnnkit.GRU(3, 4, reset_after=None), TypeError, "reset_after"),
        (lambda: rnnkit.LSTM(3, 4, bidirectional="yes"), TypeError, "bidirectional"),
        (lambda: rnnkit.GRU(3, 4, proj_size=2), TypeError, "proj_size"),
    ],
)
def test_constructor_rejects_layer_options(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


def test_load_state_dict_from_another_configuration_is_refused():
    two_layers = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True).state_dict()
    one_layer = rnnkit.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_ih_l0_reverse'"):
        one_layer.load_state_dict(two_layers)
    gru = rnnkit.GRU(3, 4)
    with pytest.raises(ValueError, match=r"state_dict\['weight_ih_l0'\]: expected shape \(12, 3\), got \(16, 3\)"):
        gru.load_state_dict(rnnkit.LSTM(3, 4).state_dict())


def test_core_cache_serves_one_backward():
    _, _, _, cache = _core.forward(CFG, PARAMS, GOOD_X, None, None, None, True, 0)
    grads = [g.copy() for g in PARAMS]
    dy = np.ones((5, 2, 4), np.float32)
    _core.backward(cache, dy, None, None, grads, True)
    with pytest.raises(ValueError, match="cache: expected the cache of a forward that has not been backpropagated"):
        _core.backward(cache, dy, None, None, grads, True)
