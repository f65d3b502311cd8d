"""Reliability rules: the NaN/Inf policy and check_finite mode, and the thread-safety rule for one
model (training from one thread at a time, inference from any)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import rnnkit
from conftest import run_concurrently


def relu_rnn(C: int = 3, H: int = 4, recurrent_scale: float = 1.0, dtype=np.float32) -> rnnkit.RNN:
    layer = rnnkit.RNN(C, H, nonlinearity="relu", dtype=dtype, seed=0)
    layer.params["weight_ih_l0"][...] = 1.0
    layer.params["weight_hh_l0"][...] = recurrent_scale * np.eye(H)
    layer.params["bias_ih_l0"][...] = 0.0
    layer.params["bias_hh_l0"][...] = 0.0
    return layer


# ---- NaN/Inf: default propagation ---------------------------------------------------------------
def test_nan_input_reaches_exactly_the_outputs_that_depend_on_it(rng):
    layer = rnnkit.LSTM(3, 5, num_layers=2, seed=0)
    x = rng.standard_normal((6, 3, 3)).astype(np.float32)
    x[2, 1, 0] = np.nan
    y, (h_n, c_n) = layer(x)
    assert np.isfinite(y[:2]).all()  # before the NaN step
    assert np.isnan(y[2:, 1]).all()  # the poisoned sequence, from its NaN step on
    assert np.isfinite(y[:, [0, 2]]).all() and np.isfinite(h_n[:, [0, 2]]).all()  # the other sequences
    assert np.isnan(h_n[:, 1]).all() and np.isnan(c_n[:, 1]).all()


# ---- check_finite mode ---------------------------------------------------------------------------
def test_check_finite_refuses_non_finite_inputs_naming_them(rng):
    layer = rnnkit.GRU(3, 4, seed=0)
    layer.check_finite = True
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    x[3, 1, 2] = np.inf
    with pytest.raises(ValueError, match=r"x: expected finite values \(check_finite is on\), got inf at index \(3, 1, 2\)"):
        layer(x)
    x[3, 1, 2] = 0.0
    h0 = np.zeros((1, 2, 4), np.float32)
    h0[0, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"h0: expected finite values .* got nan at index \(0, 0, 1\)"):
        layer(x, h0)
    layer.params["weight_hh_l0"][2, 3] = np.nan
    with pytest.raises(ValueError, match=r"params\['weight_hh_l0'\]: expected finite values"):
        layer(x)


def test_check_finite_reports_the_first_step_that_overflows():
    # A ReLU recurrence that multiplies h by 1e15 every step overflows float32 after a few steps.
    layer = relu_rnn(recurrent_scale=1e15)
    x = np.ones((8, 2, 3), np.float32)
    y, _ = layer(x)  # default: no check, the infinities come back
    first_bad = int(np.flatnonzero(~np.isfinite(y).all(axis=(1, 2)))[0])
    assert 0 < first_bad < 8
    layer.check_finite = True
    with pytest.raises(FloatingPointError, match=rf"forward: the output y became non-finite at step t={first_bad} "
                                                 r"\(batch element 0; the first such step\)"):
        layer(x)


def test_check_finite_reports_the_first_backward_step_that_overflows():
    # h_t = 3e30 (t + 1) stays finite, but dx = dgates W_ih = 1e10 * 1e30 * 4 overflows float32 at
    # every step that receives gradient: steps 0..2 when only y[2] has one.
    layer = relu_rnn()
    layer.params["weight_ih_l0"][...] = 1e30
    layer.check_finite = True
    x = np.ones((6, 1, 3), np.float32)
    layer(x)
    dy = np.zeros((6, 1, 4), np.float32)
    dy[2] = 1e10
    with pytest.raises(FloatingPointError, match=r"backward: dx became non-finite at step t=2 "
                                                 r"\(batch element 0; the first step reached going backwards\)"):
        layer.backward(dy)


def test_check_finite_refuses_non_finite_gradients_in():
    layer = rnnkit.RNN(3, 4, seed=0)
    layer.check_finite = True
    layer(np.zeros((2, 1, 3), np.float32))
    dy = np.zeros((2, 1, 4), np.float32)
    dy[1, 0, 3] = -np.inf
    with pytest.raises(ValueError, match=r"dy: expected finite values .* got -inf at index \(1, 0, 3\)"):
        layer.backward(dy)


def test_check_finite_on_the_network(rng):
    net = rnnkit.RNNNetwork(input_size=3, hidden_size=4, output_size=2, loss="mse", cell="rnn_relu", seed=0)
    net.check_finite = True
    x = np.abs(rng.standard_normal((6, 2, 3))).astype(np.float32)
    targets = rng.standard_normal((6, 2, 2)).astype(np.float32)
    net.train_step(x, targets)  # finite: passes
    bad = x.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"inputs: expected finite values .* at index \(1, 0, 0\)"):
        net.forward_loss(bad, targets)
    targets[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="targets: expected finite values"):
        net.forward_loss(x, targets)
    targets[0, 0, 0] = 0.0
    # A ReLU recurrence multiplying h by 1e20 a step overflows float32 within a few steps.
    net.params["rnn.weight_ih_l0"][...] = 1.0
    net.params["rnn.weight_hh_l0"][...] = 1e20 * np.eye(4)
    with pytest.raises(FloatingPointError, match="forward: the loss became (inf|nan)"):
        net.forward_loss(x, targets)
    with pytest.raises(FloatingPointError, match=r"forward: the outputs became non-finite at step t=\d"):
        net.forward(x)


# ---- one model, several threads ------------------------------------------------------------------
def test_training_forward_while_another_threads_forward_awaits_backward_is_refused(rng):
    layer = rnnkit.LSTM(3, 4, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    forwarded, release = threading.Event(), threading.Event()
    errors = []

    def trainer():
        try:
            y, _ = layer(x)
            forwarded.set()
            release.wait(10)
            layer.backward(np.ones_like(y))
        except Exception as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=trainer, name="trainer-A")
    t.start()
    assert forwarded.wait(10)
    with pytest.raises(RuntimeError, match=r"forward: expected this model's pending training forward \(from thread "
                                           r"'trainer-A'\) to be backpropagated first"):
        layer(x)
    # Inference is allowed meanwhile and leaves the pending cache alone.
    layer.eval()
    y_eval, _ = layer(x)
    layer.train()
    release.set()
    t.join(10)
    assert not errors, errors
    # Once backpropagated, this thread may train it.
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(y, y_eval)


def test_forward_in_one_thread_and_backward_in_another_is_allowed(rng):
    layer = rnnkit.GRU(3, 4, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("y", layer(x)[0]))
    t.start()
    t.join(10)
    dx, _ = layer.backward(np.ones_like(out["y"]))
    assert dx.shape == x.shape


def test_a_training_call_while_another_thread_is_inside_one_is_refused(rng):
    layer = rnnkit.RNN(3, 4, seed=0)
    net = rnnkit.RNNNetwork(vocab_size=5, hidden_size=4, seed=0)
    for model, call in ((layer, lambda: layer(np.zeros((2, 1, 3), np.float32))),
                        (net, lambda: net.train_step(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64)))):
        # Stand in for another thread inside forward/backward: hold the model's training lock.
        assert model._guard._lock.acquire(blocking=False)
        try:
            with pytest.raises(RuntimeError, match="forward: expected one thread at a time training this model"):
                call()
        finally:
            model._guard._lock.release()
        call()  # free again


def test_inference_from_many_threads_on_one_model_matches_sequential(rng):
    layer = rnnkit.LSTM(6, 16, num_layers=2, bidirectional=True, seed=0)
    layer.eval()
    net = rnnkit.RNNNetwork(vocab_size=20, hidden_size=16, seed=0)
    xs = [rng.standard_normal((30, 4, 6)).astype(np.float32) for _ in range(6)]
    tokens = [rng.integers(0, 20, (30, 4)) for _ in range(6)]
    expected = [(layer(x)[0], net.predict_proba(tk)[0]) for x, tk in zip(xs, tokens)]
    def work(i):
        for _ in range(3):
            out = (layer(xs[i])[0], net.predict_proba(tokens[i])[0])
        return out

    results = run_concurrently([lambda i=i: work(i) for i in range(6)])
    for (y, p), (y_exp, p_exp) in zip(results, expected):
        np.testing.assert_array_equal(y, y_exp)
        np.testing.assert_array_equal(p, p_exp)




# ---- run-to-run determinism: results do not depend on where the arrays sit in memory -------------
def at_offset(a: np.ndarray, offset: int) -> np.ndarray:
    """A copy of `a` placed `offset` elements into a fresh buffer (another alignment)."""
    flat = np.empty(a.size + offset, a.dtype)[offset:]
    flat[...] = a.ravel()
    return flat.reshape(a.shape)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "gru_reset_before", "ln_lstm", "ln_gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_results_do_not_depend_on_array_alignment(rng, cell, dtype):
    from test_layers import make

    x = rng.standard_normal((7, 3, 5)).astype(dtype)
    dy = rng.standard_normal((7, 3, 2 * 13)).astype(dtype)
    results = []
    for offset in (0, 1, 3, 7):
        layer, _ = make(cell, 5, 13, dtype=dtype, num_layers=2, bidirectional=True)
        layer.params = {k: at_offset(v, offset) for k, v in layer.params.items()}
        layer.grads = {k: at_offset(v, offset) for k, v in layer.grads.items()}
        y, _ = layer(at_offset(x, offset))
        dx, _ = layer.backward(at_offset(dy, offset))
        uni, _ = make(cell, 5, 13, dtype=dtype, num_layers=2)
        y_step, _ = uni.step(at_offset(x[0], offset))
        results.append([y, dx, y_step] + [layer.grads[k].copy() for k in sorted(layer.grads)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_network_results_do_not_depend_on_array_alignment(rng):
    tokens = rng.integers(0, 30, (9, 4))
    targets = rng.integers(0, 30, (9, 4))
    results = []
    for offset in (0, 1, 5):
        net = rnnkit.RNNNetwork(vocab_size=30, hidden_size=12, cell="ln_lstm", seed=0)
        for k in list(net.params):
            np.copyto(net.params[k], at_offset(net.params[k], offset))
        loss, _ = net.train_step(at_offset(tokens, offset), at_offset(targets, offset))
        probs, _ = net.predict_proba(at_offset(tokens, offset))
        results.append([np.array(loss), probs] + [net.grads[k].copy() for k in sorted(net.grads)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


# ---- misaligned arrays: NumPy allows them, the kernels load whole aligned elements ---------------
def misaligned(a: np.ndarray) -> np.ndarray:
    """A writable copy of `a` one byte past an aligned address (a view into a byte buffer)."""
    raw = np.zeros(a.nbytes + a.itemsize, np.uint8)
    out = np.frombuffer(raw.data, a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.flags.writeable
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before"])
def test_misaligned_inputs_are_copied_and_give_the_same_results(rng, cell):
    """Found by UBSan under the fuzz tests: a misaligned dy reached the kernels as is."""
    from test_layers import make

    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    h0 = rng.standard_normal((1, 2, 7)).astype(np.float32)
    dy = rng.standard_normal((6, 2, 7)).astype(np.float32)
    results = []
    for wrap in (np.array, misaligned):
        layer, _ = make(cell, 5, 7, dtype=np.float32)
        state = (wrap(h0), wrap(h0)) if cell == "lstm" else wrap(h0)
        y, _ = layer(wrap(x), state, lengths=wrap(np.array([6, 4])))
        dx, _ = layer.backward(wrap(dy))
        results.append([y, dx] + [layer.grads[k].copy() for k in sorted(layer.grads)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)

    net = rnnkit.RNNNetwork(vocab_size=9, hidden_size=4, seed=0)
    tokens = rng.integers(0, 9, (5, 3))
    losses = [net.evaluate(wrap(tokens), wrap(tokens))[0] for wrap in (np.array, misaligned)]
    assert losses[0] == losses[1]


def test_misaligned_parameter_or_gradient_arrays_are_refused_naming_them(rng):
    """params and grads are used in place (no copy), so a misaligned one is an error, not UB."""
    layer = rnnkit.GRU(3, 4, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    layer.params["weight_hh_l0"] = misaligned(layer.params["weight_hh_l0"])
    with pytest.raises(ValueError, match=r"params\['weight_hh_l0'\]: expected an aligned array"):
        layer(x)
    layer.params["weight_hh_l0"] = np.array(layer.params["weight_hh_l0"])
    layer.grads["bias_ih_l0"] = misaligned(layer.grads["bias_ih_l0"])
    y, _ = layer(x)
    with pytest.raises(ValueError, match=r"grads\['bias_ih_l0'\]: expected an aligned array"):
        layer.backward(np.ones_like(y))
