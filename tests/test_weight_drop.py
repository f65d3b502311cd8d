"""Weight drop (DropConnect on W_hh, as AWD-LSTM; issue 15): in training, one mask on the recurrent
weights per forward call, the kept ones scaled by 1/(1-p); gradients only through kept weights;
none in eval mode. The masks come from the layer's dropout_rng, so a seed fixes them: the forward
equals an eval forward with W_hh replaced by the masked weights, and the gradients pass float64
finite differences with the masks fixed.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import _core
from reference import assert_cuda_agrees
from test_gradients import check_all_gradients

WEIGHT_DROP_STREAM = 1 << 40  # stack.h's kWeightDropStream: group g's masks are "layer" 2^40 + g
REF_RTOL = 1e-12

CELLS = {"RNN": {}, "LSTM": {}, "GRU": {}, "GRU_before": {"reset_after": False}, "LayerNormLSTM": {},
         "IndRNN": {}, "LSTM_proj": {"proj_size": 2}}


def make(name, **kw):
    return getattr(rnnkit, name.split("_")[0])(3, 4, dtype="float64", seed=0, **CELLS[name], **kw)


def masked_copy(layer, seed):
    """The layer's parameters with every W_hh multiplied by its mask for this dropout seed."""
    state = layer.state_dict()
    D = layer.num_directions
    for name in state:
        if name.startswith("weight_hh"):
            k = int(name.split("_l")[1].split("_")[0])
            g = k * D + (1 if name.endswith("_reverse") else 0)
            mask = _core._dropout_mask(seed, WEIGHT_DROP_STREAM + g, state[name].size, layer.weight_dropout)
            state[name] = state[name] * mask.reshape(state[name].shape)
    return state


@pytest.mark.parametrize("name", list(CELLS))
def test_the_training_forward_uses_the_masked_weights(name, rng):
    layer = make(name, num_layers=2, bidirectional=True, weight_dropout=0.4)
    plain = make(name, num_layers=2, bidirectional=True)
    layer.dropout_rng = np.random.default_rng(11)
    seed = int(np.random.default_rng(11).integers(0, 2**63))  # the draw the forward makes
    plain.load_state_dict(masked_copy(layer, seed))
    plain.eval()
    x = rng.standard_normal((5, 3, 3))
    y, _ = layer(x)
    y_ref, _ = plain(x)
    np.testing.assert_allclose(y, y_ref, rtol=REF_RTOL, atol=1e-14)
    mask = _core._dropout_mask(seed, WEIGHT_DROP_STREAM, layer.params["weight_hh_l0"].size, 0.4)
    assert 0 < np.count_nonzero(mask == 0) < mask.size, "the mask drops some weights, not all"
    # Eval mode: no mask.
    layer.eval()
    plain.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(layer(x)[0], plain(x)[0])


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU_before", "IndRNN", "LSTM_proj"])
def test_finite_differences_with_the_masks_fixed(name, rng):
    layer = make(name, num_layers=2, weight_dropout=0.5)

    def fix_masks():
        layer.dropout_rng = np.random.default_rng(5)

    checks = check_all_gradients(layer, rng, lengths=np.array([4, 2, 3]), before_forward=fix_masks)
    seed = int(np.random.default_rng(5).integers(0, 2**63))
    mask = _core._dropout_mask(seed, WEIGHT_DROP_STREAM, layer.params["weight_hh_l0"].size, 0.5)
    assert np.all(checks["weight_hh_l0"][1].reshape(-1)[mask == 0] == 0), "dropped weights get no gradient"


def test_a_seed_reproduces_and_calls_differ(rng):
    x = rng.standard_normal((5, 2, 3))
    a, b = make("LSTM", weight_dropout=0.3), make("LSTM", weight_dropout=0.3)
    ya, yb = a(x)[0], b(x)[0]
    np.testing.assert_array_equal(ya, yb)          # same seed, same masks
    assert not np.array_equal(a(x)[0], ya)         # a new mask each forward call


@pytest.mark.parametrize("value, match", [(1.0, r"weight_dropout: expected a probability in \[0, 1\)"),
                                          (-0.1, "weight_dropout: expected a probability")])
def test_bad_probabilities_are_refused(value, match):
    with pytest.raises(ValueError, match=match):
        rnnkit.GRU(3, 4, weight_dropout=value)


def test_cells_without_recurrent_weights_refuse_it():
    with pytest.raises(ValueError, match=r"weight_dropout: expected 0 for cell mingru \(it has no recurrent weight\)"):
        rnnkit.MinGRU(3, 4, weight_dropout=0.2)


def test_networks_and_torch_modules_take_it(rng):
    net = rnnkit.RNNNetwork(vocab_size=5, hidden_size=6, cell="lstm", weight_dropout=0.25, seed=0)
    assert net.rnn.weight_dropout == 0.25 and rnnkit.RNNNetwork(**net.config()).rnn.weight_dropout == 0.25
    tokens = rng.integers(0, 5, size=(6, 2))
    loss, _ = net.train_step(tokens[:-1], tokens[1:])
    assert np.isfinite(loss)
    torch = pytest.importorskip("torch")
    from rnnkit import torch as rtorch

    m = rtorch.GRU(3, 4, weight_dropout=0.5, dtype=torch.float64)
    x = torch.from_numpy(rng.standard_normal((5, 2, 3)))
    y_train, _ = m(x)
    y_train.sum().backward()
    assert m.weight_hh_l0.grad is not None and torch.count_nonzero(m.weight_hh_l0.grad == 0) > 0
    m.eval()
    layer = rnnkit.GRU(3, 4, dtype="float64")
    layer.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
    np.testing.assert_allclose(m(x)[0].detach().numpy(), layer.eval()(x.numpy())[0], rtol=1e-12)


def test_cli_trains_with_weight_drop(tmp_path):
    import subprocess
    import sys

    def run(*flags):
        return subprocess.run([sys.executable, "-m", "rnnkit", "train", "--steps", "5", *flags], capture_output=True,
                              text=True, timeout=300)

    done = run("--weight-dropout", "0.3", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    from rnnkit.train.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "run" / "checkpoint.npz")))
    assert model.rnn.weight_dropout == 0.3
    bad = run("--weight-dropout", "1", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "--weight-dropout" in bad.stderr and "[0, 1)" in bad.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
@pytest.mark.parametrize("name", ["LSTM", "GRU_before", "IndRNN"])
def test_the_cuda_backend_agrees(name, rng):
    assert_cuda_agrees(lambda: make(name, num_layers=2, bidirectional=True, weight_dropout=0.3), rng)
