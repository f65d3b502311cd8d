"""rnnkit.onnx.load (issue 14): the layer (or RNNNetwork) an ONNX model of RNN/LSTM/GRU nodes
computes, from rnnkit's own export and from torch.onnx.export of torch.nn.LSTM/GRU, and the first
node it cannot map named when it cannot.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

import rnnkit
import rnnkit.onnx as rnnkit_onnx

onnx = pytest.importorskip("onnx", reason="onnx is not installed: rnnkit.onnx.load is not tested")

# A loaded layer against the model it came from: the same float32 weights and arithmetic,
# summed in another order (PyTorch's or rnnkit's own kernels).
LOAD_RTOL = 1e-5


def _torch_export(module, x):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    pytest.importorskip("onnxscript", reason="onnxscript (the dynamo ONNX exporter's dependency) is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            return torch.onnx.export(module, (x,), dynamo=True, verbose=False).model_proto
        finally:
            logging.disable(logging.NOTSET)


@pytest.mark.parametrize("cls,options", [("LSTM", dict(num_layers=2, bidirectional=True)), ("GRU", {}),
                                         ("GRU", dict(batch_first=True, bidirectional=True)),
                                         ("LSTM", dict(bias=False))])
def test_a_torch_export_loads(cls, options, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    torch.manual_seed(0)
    module = getattr(torch.nn, cls)(4, 5, **options).eval()
    x = torch.from_numpy(rng.standard_normal((2, 3, 4) if options.get("batch_first") else (3, 2, 4)).astype(np.float32))
    layer = rnnkit_onnx.load(_torch_export(module, x))
    assert type(layer).__name__ == cls and layer.num_layers == module.num_layers
    assert layer.bidirectional == module.bidirectional and layer.batch_first == module.batch_first
    assert layer.bias == module.bias
    with torch.no_grad():
        want, want_state = module(x)
    layer.eval()
    y, state = layer(x.numpy())
    np.testing.assert_allclose(y, want.numpy(), rtol=LOAD_RTOL, atol=LOAD_RTOL)
    h = state[0] if cls == "LSTM" else state
    w_h = want_state[0] if cls == "LSTM" else want_state
    np.testing.assert_allclose(h, w_h.numpy(), rtol=LOAD_RTOL, atol=LOAD_RTOL)
    # torch.nn.GRU is PyTorch's reset_after flavour: ONNX linear_before_reset=1.
    if cls == "GRU":
        assert layer.reset_after


@pytest.mark.parametrize("make", [
    lambda: rnnkit.RNN(3, 4, nonlinearity="relu", num_layers=2, seed=1),
    lambda: rnnkit.LSTM(3, 4, direction="reverse", num_layers=2, seed=1),
    lambda: rnnkit.GRU(3, 4, reset_after=False, bidirectional=True, batch_first=True, seed=1),
    lambda: rnnkit.GRU(3, 4, bias=False, seed=1),
], ids=["rnn-relu-2", "lstm-reverse-2", "gru-before-bi-batch-first", "gru-no-bias"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["plain", "lengths-state"])
def test_rnnkits_own_export_round_trips(make, with_lengths, tmp_path, rng):
    layer = make()
    path = tmp_path / "m.onnx"
    rnnkit_onnx.export(layer, path, with_lengths=with_lengths, with_initial_state=with_lengths)
    back = rnnkit_onnx.load(path)
    assert repr(back).replace(", seed=1", "") == repr(layer)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)


@pytest.mark.parametrize("options", [
    dict(vocab_size=7, hidden_size=4, cell="gru"),
    dict(input_size=3, hidden_size=4, cell="lstm", head="last", output_size=2, loss="mse", bidirectional=True,
         batch_first=True),
    dict(vocab_size=7, hidden_size=5, cell="rnn_relu", head="last", output_size=3, direction="reverse", num_layers=2),
    dict(vocab_size=9, embedding_dim=3, hidden_size=4, cell="gru_reset_before", num_layers=2, batch_first=True),
], ids=["tokens-gru", "dense-lstm-last-bi-mse", "tokens-relu-last-reverse", "tokens-gru-before-2-bf"])
def test_a_network_export_loads_as_the_network(options, tmp_path, rng):
    net = rnnkit.RNNNetwork(seed=0, **options)
    path = tmp_path / "net.onnx"
    rnnkit_onnx.export(net, path)
    back = rnnkit_onnx.load(path)
    assert isinstance(back, rnnkit.RNNNetwork)
    assert back.config() == dict(net.config(), seed=None)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)


def test_what_cannot_be_mapped_is_named(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    # torch.onnx.export unrolls torch.nn.RNN into per-step MatMul/Add/Tanh: no RNN node to read.
    proto = _torch_export(torch.nn.RNN(4, 5).eval(), torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match=r"model: node 0 \(MatMul '.*'\) cannot be mapped: the graph has no RNN, "
                                         r"LSTM or GRU node"):
        rnnkit_onnx.load(proto)
    path = tmp_path / "m.onnx"
    net = rnnkit.RNNNetwork(vocab_size=6, hidden_size=4)
    rnnkit_onnx.export(net, path)
    model = onnx.load(path)
    relu = onnx.helper.make_node("Relu", ["probs"], ["relu_out"], name="extra")
    model.graph.node.append(relu)
    with pytest.raises(ValueError, match=r"node \d+ \(Relu 'extra'\) cannot be mapped"):
        rnnkit_onnx.load(model)
    # An attribute rnnkit's layers cannot honour: refused, saying what.
    layer = rnnkit.LSTM(3, 4)
    rnnkit_onnx.export(layer, path)
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    node.attribute.append(onnx.helper.make_attribute("activations", ["Sigmoid", "Swish", "Tanh"]))
    with pytest.raises(ValueError, match=r"\(LSTM .*\) cannot be mapped: \['activations'\]: expected names among "
                                         r"\['Sigmoid'.*got 'Swish'"):
        rnnkit_onnx.load(model)
    with pytest.raises(TypeError, match="path: expected a str or os.PathLike"):
        rnnkit_onnx.load(3)
