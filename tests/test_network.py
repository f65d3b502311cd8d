"""RNNNetwork: forward and loss against a NumPy reference, every gradient against finite
differences, training trajectories against PyTorch, streaming and generation, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from conftest import FINITE_DIFF_EPS, FINITE_DIFF_RTOL, REFERENCE_RTOL, require_torch
from reference import central_difference, max_relative_diff, relative_error, stack_forward

NET_MODES = {"rnn_tanh": "RNN_TANH", "lstm": "LSTM", "gru": "GRU", "ln_gru": "LN_GRU"}
# Loss trajectories vs PyTorch over 100 steps (issue: the recurrent network).
TRAJECTORY_RTOL = {np.float64: 1e-6, np.float32: 1e-3}


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference_network(net, inputs, targets=None, lengths=None, state=None):
    """The network written out in NumPy: embedding, stack (tests/reference.py), output, loss."""
    p = {k: v.astype(np.float64) for k, v in net.params.items()}
    x = p["embedding.weight"][inputs] if net.vocab_size else inputs.astype(np.float64)
    rnn_state = {k[4:]: v for k, v in p.items() if k.startswith("rnn.")}
    h0 = c0 = None
    if state is not None:
        h0, c0 = state if isinstance(state, tuple) else (state, None)
    y, h_n, c_n = stack_forward(NET_MODES[net.cell], rnn_state, x, net.rnn.num_layers, net.rnn.bidirectional,
                                h0, c0, lengths)
    if net.head == "sequence":
        feats = y
    else:
        D = net.rnn.num_directions
        feats = np.concatenate([h_n[(net.rnn.num_layers - 1) * D + d] for d in range(D)], axis=-1)
    out = feats @ p["output.weight"].T + p["output.bias"]
    loss = None
    if targets is not None:
        if net.loss_kind == "cross_entropy":
            lp = log_softmax(out)
            valid = targets != net.ignore_index
            if net.head == "sequence" and lengths is not None:
                valid &= np.arange(targets.shape[0])[:, None] < np.asarray(lengths)[None, :]
            picked = np.take_along_axis(lp, np.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
            loss = float(-(picked * valid).sum() / valid.sum())
        else:
            valid = np.ones(out.shape[:-1], bool)
            if net.head == "sequence" and lengths is not None:
                valid = np.arange(out.shape[0])[:, None] < np.asarray(lengths)[None, :]
            sq = ((out - targets) ** 2) * valid[..., None]
            loss = float(sq.sum() / (valid.sum() * out.shape[-1]))
    return out, loss


def make_net(kind, cell="lstm", dtype=np.float64, **kw):
    common = dict(hidden_size=5, cell=cell, dtype=dtype, seed=3, **kw)
    if kind == "lm":
        return rnnkit.RNNNetwork(vocab_size=7, embedding_dim=4, **common)
    if kind == "classify":
        return rnnkit.RNNNetwork(vocab_size=7, embedding_dim=4, output_size=3, head="last", **common)
    if kind == "regress_last":
        return rnnkit.RNNNetwork(input_size=3, output_size=2, head="last", loss="mse", **common)
    return rnnkit.RNNNetwork(input_size=3, output_size=2, loss="mse", **common)  # regress_seq


def problem(net, rng, T=5, N=3):
    if net.vocab_size:
        inputs = rng.integers(0, net.vocab_size, (T, N))
    else:
        inputs = rng.standard_normal((T, N, net.input_size))
    seq = net.head == "sequence"
    if net.loss_kind == "cross_entropy":
        targets = rng.integers(0, net.output_size, (T, N) if seq else (N,))
    else:
        targets = rng.standard_normal((T, N, net.output_size) if seq else (N, net.output_size))
    return inputs, targets


KINDS = ["lm", "classify", "regress_last", "regress_seq"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cell", list(NET_MODES))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_forward_and_loss_match_reference(rng, kind, cell, with_lengths):
    net = make_net(kind, cell, num_layers=2, bidirectional=True)
    inputs, targets = problem(net, rng)
    lengths = [5, 2, 4] if with_lengths else None
    out, _ = net(inputs, None, lengths)
    loss, _ = net.forward_loss(inputs, targets, None, lengths)
    out_ref, loss_ref = reference_network(net, inputs, targets, lengths)  # padded steps: output = bias
    assert max_relative_diff(out, out_ref) < REFERENCE_RTOL[np.float64]
    assert abs(loss - loss_ref) < 1e-12 * abs(loss_ref)


def test_ignore_index_targets_do_not_count(rng):
    net = make_net("lm")
    inputs, targets = problem(net, rng)
    targets[1:3, 0] = -100
    loss, _ = net.forward_loss(inputs, targets)
    _, loss_ref = reference_network(net, inputs, targets)
    assert abs(loss - loss_ref) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_network_gradient_matches_finite_differences(rng, kind, cell):
    net = make_net(kind, cell, num_layers=2, bidirectional=True)
    inputs, targets = problem(net, rng)
    lengths = [5, 3, 4]
    state = net.init_state(3)
    state = tuple(rng.standard_normal(s.shape) for s in state) if isinstance(state, tuple) else rng.standard_normal(state.shape)
    net.zero_grad()
    net.train_step(inputs, targets, state, lengths)
    grads = {k: g.copy() for k, g in net.grads.items()}

    def loss():
        return net.evaluate(inputs, targets, state, lengths)[0]

    failures = []
    for name, p in net.params.items():
        err = relative_error(grads[name], central_difference(loss, p, FINITE_DIFF_EPS))
        if not err < FINITE_DIFF_RTOL:
            failures.append(f"{name}: {err:.2e}")
    assert not failures, failures


@pytest.mark.parametrize("kind", ["regress_last", "regress_seq"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_dense_input_gradient_matches_finite_differences(rng, kind, batch_first):
    """backward(compute_dx=True): dL/d(inputs) of a dense network, shaped like the inputs."""
    net = make_net(kind, "gru", num_layers=2, bidirectional=True, batch_first=batch_first)
    inputs, targets = problem(net, rng)
    if batch_first:
        inputs = np.ascontiguousarray(inputs.transpose(1, 0, 2))
        if net.head == "sequence":
            targets = np.ascontiguousarray(targets.transpose(1, 0, 2))
    lengths = [5, 3, 4]
    net.forward_loss(inputs, targets, None, lengths)
    dx, dstate = net.backward(compute_dx=True)
    assert dx.shape == inputs.shape and dstate.shape == net.init_state(3).shape
    fd = central_difference(lambda: net.evaluate(inputs, targets, None, lengths)[0], inputs, FINITE_DIFF_EPS)
    assert relative_error(dx, fd) < FINITE_DIFF_RTOL
    with pytest.raises(ValueError, match="compute_dx: expected False for a token network"):
        make_net("lm").backward(compute_dx=True)


def test_backward_with_external_output_gradient_matches_fused_loss(rng):
    """forward() + backward(d_outputs) with the loss's gradient == train_step's fused loss."""
    net = make_net("lm", "gru")
    inputs, targets = problem(net, rng)
    net.zero_grad()
    net.train_step(inputs, targets)
    fused = {k: g.copy() for k, g in net.grads.items()}
    net.zero_grad()
    logits, _ = net(inputs)
    p = np.exp(log_softmax(logits))
    onehot = np.eye(net.output_size)[targets]
    net.backward((p - onehot) / targets.size)
    for k in fused:
        assert max_relative_diff(net.grads[k], fused[k]) < 1e-12, k


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_training_trajectory_matches_pytorch(rng, cell, dtype):
    """Same weights, same batches, Adam + clipping: the same losses for 100 steps."""
    torch = require_torch()
    V, E, H, T, N = 20, 8, 16, 12, 4
    net = rnnkit.RNNNetwork(vocab_size=V, embedding_dim=E, hidden_size=H, cell=cell, num_layers=2,
                            dtype=dtype, seed=0)

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, E)
            self.rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(E, H, num_layers=2)
            self.output = torch.nn.Linear(H, V)

        def forward(self, x):
            y, _ = self.rnn(self.embedding(x))
            return self.output(y)

    twin = Twin().to(getattr(torch, np.dtype(dtype).name))
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    ours = rnnkit.optim.Adam(net, lr=1e-2)
    theirs = torch.optim.Adam(twin.parameters(), lr=1e-2)
    worst = 0.0
    for _ in range(100):
        x = rng.integers(0, V, (T, N))
        y = rng.integers(0, V, (T, N))
        loss, _ = net.train_step(x, y)
        rnnkit.optim.clip_grad_norm(net, 0.5)
        ours.step()
        ours.zero_grad()
        theirs.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)).reshape(-1, V), torch.from_numpy(y).reshape(-1))
        t_loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        theirs.step()
        worst = max(worst, abs(loss - t_loss.item()) / abs(t_loss.item()))
    assert worst < TRAJECTORY_RTOL[dtype], worst


@pytest.mark.parametrize("cell", ["lstm", "gru", "ln_gru"])
def test_step_streaming_equals_full_forward(rng, cell):
    net = make_net("lm", cell, num_layers=2)
    inputs, _ = problem(net, rng, T=7, N=3)
    net.eval()
    probs_full, state_full = net.predict_proba(inputs)
    state = None
    for t in range(7):
        y_t, state = net.step(inputs[t], state)
        np.testing.assert_allclose(y_t, probs_full[t], rtol=1e-12, atol=1e-15)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    state_full if isinstance(state_full, tuple) else (state_full,)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_step_state_is_copyable(rng):
    net = make_net("lm", "lstm")
    _, state = net.step(3)
    branch = tuple(s.copy() for s in state)
    y1, _ = net.step(4, state)
    y2, _ = net.step(4, branch)
    np.testing.assert_array_equal(y1, y2)
    assert y1.shape == (1, 7) and abs(y1.sum() - 1) < 1e-12


def test_generate_is_seeded_and_greedy_follows_argmax(rng):
    net = make_net("lm", "gru")
    a = net.generate([1, 2, 3], 20, temperature=1.0, seed=5)
    b = net.generate([1, 2, 3], 20, temperature=1.0, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (20,) and a.min() >= 0 and a.max() < 7
    greedy = net.generate([1, 2, 3], 10, temperature=0.0, seed=0)
    net.eval()
    y, state = None, None
    for tok in [1, 2, 3]:
        y, state = net.step(tok, state)
    for tok in greedy:
        assert tok == int(np.argmax(y[0]))
        y, state = net.step(int(tok), state)


def test_generate_top_k_limits_the_choices(rng):
    net = make_net("lm", "gru")
    net.eval()
    probs, _ = net.predict_proba(np.array([[2]]))
    top2 = set(np.argsort(probs[0, 0])[-2:].tolist())
    firsts = {int(net.generate([2], 1, temperature=5.0, top_k=2, seed=s)[0]) for s in range(40)}
    assert firsts <= top2 and len(firsts) == 2


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda n: n.forward_loss(np.array([[7, 1]]), np.array([[1, 1]])), ValueError, r"tokens\[0, 0\]: expected a token id in \[0, 7\), got 7"),
        (lambda n: n.forward_loss(np.array([[1.0, 1.0]]), np.array([[1, 1]])), TypeError, "inputs: expected integer ids, got dtype float64"),
        (lambda n: n.forward_loss(np.array([[1, 1]]), np.array([[1, 9]])), ValueError, r"targets\[0, 1\]: expected a class id in \[0, 7\)"),
        (lambda n: n.forward_loss(np.array([[1, 1]]), np.array([1, 1])), ValueError, r"targets: expected shape \(1, 2\)"),
        (lambda n: n.forward_loss(np.array([[1, 1]]), np.array([[-100, -100]])), ValueError, "targets: expected at least one target"),
        (lambda n: n.forward(np.array([1, 1])), ValueError, r"inputs: expected a 2-D array"),
        (lambda n: n.forward(np.array([[1, 1]]), np.zeros((1, 2, 5))), TypeError, r"state: expected a tuple \(h, c\)"),
        (lambda n: n.backward(), RuntimeError, "backward: expected a preceding training forward"),
        (lambda n: n.generate([], 3), ValueError, "prefix: expected at least one token id"),
        (lambda n: n.generate([1], 3, temperature=-1.0), ValueError, "temperature"),
    ],
)
def test_network_rejects_bad_input(call, exc, pattern):
    net = make_net("lm", "lstm")
    with pytest.raises(exc, match=pattern):
        call(net)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(hidden_size=4), ValueError, "vocab_size, input_size: expected exactly one of them"),
        (dict(vocab_size=5, input_size=3, hidden_size=4), ValueError, "expected exactly one"),
        (dict(input_size=3, hidden_size=4), ValueError, "output_size: expected an integer"),
        (dict(vocab_size=5, hidden_size=4, cell="transformer"), ValueError, "cell: expected one of"),
        (dict(vocab_size=5, hidden_size=4, head="first"), ValueError, "head: expected one of"),
        (dict(vocab_size=5, hidden_size=4, loss="hinge"), ValueError, "loss: expected one of"),
        (dict(input_size=3, hidden_size=4, output_size=2, embedding_dim=3), ValueError, "embedding_dim: expected None"),
        (dict(input_size=3, hidden_size=4, output_size=1, loss="cross_entropy"), ValueError, "at least 2 classes"),
    ],
)
def test_network_constructor_rejects(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        rnnkit.RNNNetwork(**kwargs)
