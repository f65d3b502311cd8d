"""The recurrent neural network: input -> recurrent stack -> output layer -> softmax / loss.

``RNNNetwork`` composes an embedding (token inputs) or dense features, any rnnkit recurrent layer
stack, and an output layer ``y_t = V h_t + c``. Its forward, loss and backward each run as one
C++ call (``_core.network_forward`` / ``network_backward``), so a training step makes no
per-timestep or per-layer Python call.

Parameter names are those of a PyTorch module with submodules ``embedding`` (``nn.Embedding``),
``rnn`` (``nn.LSTM`` ...) and ``output`` (``nn.Linear``), so a PyTorch twin loads rnnkit's
``state_dict()`` directly.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from . import _device as D
from . import _validate as V
from . import layers
from ._cells import CELL_NAMES, CELLS, DEFAULTS, LAYER_CLASSES, REGULARISERS, onnx_keywords
from ._guard import TrainingGuard
from .layers import _RecurrentLayer, _is_step_array

HEADS = ("sequence", "last")
LOSSES = ("cross_entropy", "mse")

State = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


def _host(a: Any) -> Any:
    """A host view of an array for a check: NumPy arrays as they are, device arrays copied."""
    return None if a is None else D.to_numpy(a)


def _swap_leading(a: Any) -> Any:
    """[A, B, ...] -> [B, A, ...]: a device array on the device, a NumPy array as a C-ordered copy."""
    return a.swapaxes01() if D.is_device_array(a) else V.c_array(a.swapaxes(0, 1))


class RNNNetwork:
    """A recurrent network with an output layer and a loss.

    Args (keyword-only):
        vocab_size: token input through an embedding of ``embedding_dim`` (default hidden_size);
            inputs are integer ids ``[T, N]``. Give this or ``input_size``.
        input_size: dense input features ``[T, N, input_size]``.
        hidden_size, num_layers, bidirectional, dropout, proj_size, direction: the recurrent stack's
            options (``direction="reverse"`` or ``"bidirectional"``, as for the layers).
        cell: ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"``, ``"gru"``, ``"gru_reset_before"``,
            ``"ln_lstm"`` or ``"ln_gru"`` (the rows of rnnkit._cells.CELLS).
        output_size: K, classes or regression targets (default: vocab_size).
        head: ``"sequence"`` (an output at every step: language modelling, sequence labelling,
            forecasting) or ``"last"`` (one output per sequence from the last layer's final state,
            both directions, at each sequence's own last step with ``lengths``: classification).
        loss: ``"cross_entropy"`` (softmax outputs; targets are class ids; ``ignore_index``
            targets are skipped) or ``"mse"`` (linear outputs; float targets).
        batch_first: inputs ``[N, T, ...]``, targets and outputs likewise.
        dtype, seed, init, init_gain, forget_bias: as for the layers.
        precision: ``"float32"`` or ``"bfloat16"`` (the stack's and the output layer's GEMMs round
            their operands to bfloat16 and sum in float32; parameters, gradients and optimizer
            state stay float32).
        activations, activation_alpha, activation_beta, clip, peephole, coupled_gates: ONNX's
            options of the stack's cells (README, "ONNX's options"), where the cell has them.
        recurrent_max_abs: the IndRNN cells' bound on |u|, kept after every optimizer step.
        weight_dropout: DropConnect on the stack's recurrent weights in training (the layers').
        zoneout, zoneout_cell, input_dropout, recurrent_dropout: the stack's zoneout and
            variational dropout (the layers'; README, "Recurrent regularisation").

    Losses are means over valid targets (padded steps and ``ignore_index`` do not count).
    """

    def __init__(
        self,
        *,
        vocab_size: Optional[int] = None,
        input_size: Optional[int] = None,
        embedding_dim: Optional[int] = None,
        hidden_size: int = 128,
        output_size: Optional[int] = None,
        cell: str = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        proj_size: int = 0,
        head: str = "sequence",
        loss: str = "cross_entropy",
        ignore_index: int = -100,
        batch_first: bool = False,
        dtype: Any = "float32",
        seed: Optional[int] = None,
        init: str = "default",
        init_gain: float = 1.0,
        forget_bias: Optional[float] = None,
        precision: str = "float32",
        direction: Optional[str] = None,
        activations: Optional[Sequence[str]] = None,
        activation_alpha: Optional[Sequence[Optional[float]]] = None,
        activation_beta: Optional[Sequence[Optional[float]]] = None,
        clip: Optional[float] = None,
        peephole: bool = False,
        coupled_gates: bool = False,
        recurrent_max_abs: Optional[float] = None,
        weight_dropout: float = 0.0,
        zoneout: float = 0.0,
        zoneout_cell: float = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
    ) -> None:
        if (vocab_size is None) == (input_size is None):
            raise ValueError("vocab_size, input_size: expected exactly one of them (token or dense input), "
                             f"got vocab_size={vocab_size!r}, input_size={input_size!r}")
        self.vocab_size = 0 if vocab_size is None else V.check_size("vocab_size", vocab_size)
        self.hidden_size = V.check_size("hidden_size", hidden_size)
        if self.vocab_size:
            self.embedding_dim = V.check_size("embedding_dim", embedding_dim if embedding_dim is not None else hidden_size)
            rnn_input = self.embedding_dim
        else:
            if embedding_dim is not None:
                raise ValueError(f"embedding_dim: expected None for dense input, got {embedding_dim!r}")
            self.embedding_dim = None
            rnn_input = V.check_size("input_size", input_size)
        self.input_size = None if self.vocab_size else rnn_input
        self.cell = V.check_choice("cell", cell, CELL_NAMES)
        self.head = V.check_choice("head", head, HEADS)
        self.loss_kind = V.check_choice("loss", loss, LOSSES)
        if output_size is None:
            if not (self.vocab_size and self.loss_kind == "cross_entropy"):
                raise ValueError("output_size: expected an integer (it defaults to vocab_size only for a "
                                 "token network with cross_entropy), got None")
            output_size = self.vocab_size
        self.output_size = V.check_size("output_size", output_size)
        self.ignore_index = int(ignore_index)
        self.batch_first = V.check_bool("batch_first", batch_first)
        self.dtype = V.resolve_dtype(dtype)
        self.seed = V.check_seed("seed", seed)
        rnn_seq, head_seq = np.random.SeedSequence(self.seed).spawn(2)

        layer_cls = getattr(layers, CELLS[self.cell].layer)
        kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, dropout=dropout, dtype=self.dtype,
                      seed=int(rnn_seq.generate_state(1, np.uint64)[0] >> np.uint64(1)), init=init,
                      init_gain=init_gain, precision=precision, direction=direction, weight_dropout=weight_dropout,
                      zoneout=zoneout, zoneout_cell=zoneout_cell, input_dropout=input_dropout,
                      recurrent_dropout=recurrent_dropout, **CELLS[self.cell].options)
        if proj_size:
            if "proj_size" not in LAYER_CLASSES[CELLS[self.cell].layer].positional:
                raise ValueError(f"proj_size: expected 0 for cell {self.cell!r} (projections exist for LSTM only), "
                                 f"got {proj_size!r}")
            kwargs["proj_size"] = proj_size
        if forget_bias is not None:
            kwargs["forget_bias"] = forget_bias
        onnx_given = {"activations": activations, "activation_alpha": activation_alpha,
                      "activation_beta": activation_beta, "clip": clip, "peephole": peephole,
                      "coupled_gates": coupled_gates, "recurrent_max_abs": recurrent_max_abs}
        for key, value in onnx_given.items():
            if value is None or value is False:
                continue
            if key not in LAYER_CLASSES[CELLS[self.cell].layer].keyword:
                raise ValueError(f"{key}: expected {DEFAULTS[key]!r} for cell {self.cell!r} (it has no {key}), got "
                                 f"{value!r}")
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        self.rnn: _RecurrentLayer = layer_cls(rnn_input, self.hidden_size, **kwargs)
        self._config = _core.NetworkConfig(self.rnn._config, self.vocab_size, self.output_size, self.head,
                                           self.loss_kind, self.ignore_index)
        self._specs = [(n, tuple(s)) for n, s in self._config.param_specs()]
        self._head_rng = np.random.default_rng(head_seq)
        self._cache = None
        self._cache_batch_first = False
        self.training = True
        #: Where the parameters, gradients and computation live: "cpu" or "cuda" (``to()``).
        self.device = "cpu"
        #: Scan every call's inputs and results for NaN/Inf (README, "Input rules"): ValueError for
        #: an input, FloatingPointError for a computed value.
        self.check_finite = False
        self._guard = TrainingGuard()
        self._init_head()

    # ---- construction ----------------------------------------------------------------------
    def config(self) -> Dict[str, Any]:
        """The constructor arguments (JSON-serialisable): ``RNNNetwork(**model.config())`` rebuilds it."""
        r = self.rnn
        return {
            "vocab_size": self.vocab_size or None, "input_size": self.input_size,
            "embedding_dim": self.embedding_dim, "hidden_size": self.hidden_size,
            "output_size": self.output_size, "cell": self.cell, "num_layers": r.num_layers,
            "bidirectional": r.bidirectional, "dropout": r.dropout, "proj_size": r.proj_size,
            "head": self.head, "loss": self.loss_kind, "ignore_index": self.ignore_index,
            "batch_first": self.batch_first, "dtype": self.dtype.name, "seed": self.seed,
            "init": r.init, "init_gain": r.init_gain, "forget_bias": r.forget_bias,
            "precision": r.precision, "direction": r.direction, **{k: getattr(r, k) for k in REGULARISERS}, **onnx_keywords(r),
            **({"recurrent_max_abs": r.recurrent_max_abs} if r.recurrent_max_abs is not None else {}),
        }

    def _after_optimizer_step(self) -> None:
        self.rnn.clamp_recurrent()

    def _init_head(self) -> None:
        F = self._config.feature_size
        rng = self._head_rng
        own: Dict[str, np.ndarray] = {}
        if self.vocab_size:
            own["embedding.weight"] = rng.standard_normal((self.vocab_size, self.embedding_dim))
        bound = 1.0 / np.sqrt(F)
        own["output.weight"] = rng.uniform(-bound, bound, (self.output_size, F))
        own["output.bias"] = rng.uniform(-bound, bound, self.output_size)
        own = {k: V.c_array(v, dtype=self.dtype) for k, v in own.items()}
        self.params: Dict[str, np.ndarray] = {}
        self.grads: Dict[str, np.ndarray] = {}
        for name, _ in self._specs:
            if not name.startswith("rnn."):
                self.params[name] = own[name]
                self.grads[name] = np.zeros_like(own[name])
        if getattr(self, "device", "cpu") != "cpu":
            self._move_head(D.to_device)
        self._link_rnn()

    def _link_rnn(self) -> None:
        """Points the ``rnn.*`` entries of params and grads at the stack's own arrays (which its
        ``to()`` and ``reset_parameters`` replace)."""
        for name, _ in self._specs:
            if name.startswith("rnn."):
                self.params[name] = self.rnn.params[name[4:]]
                self.grads[name] = self.rnn.grads[name[4:]]

    def _move_head(self, move) -> None:
        for name, _ in self._specs:
            if not name.startswith("rnn."):
                self.params[name] = move(self.params[name])
                self.grads[name] = move(self.grads[name])

    # ---- device -------------------------------------------------------------------------------
    def to(self, device: Any) -> "RNNNetwork":
        """Moves every parameter and gradient to ``device`` ("cpu" or "cuda") and computes there
        from then on (the embedding, the stack, the output layer and the loss); returns the network.
        On "cuda", dense inputs, states and float targets may be NumPy arrays (copied to the device)
        or device arrays; token ids, class-id targets and lengths are read on the host (device
        arrays of them are copied back). Outputs and states come back as device arrays
        (``rnnkit.to_numpy`` copies one to the host). A pending training forward is dropped; an
        optimizer made before the move must be made again (its state lives where the parameters
        were)."""
        device = D.check_device("device", device)
        if device == self.device:
            return self
        self.rnn.to(device)
        self._move_head(D.to_device if device == "cuda" else D.to_numpy)
        self._link_rnn()
        self.device = device
        self._cache = None
        self._guard.set_pending(False)
        return self

    def cuda(self) -> "RNNNetwork":
        """``to("cuda")``."""
        return self.to("cuda")

    def cpu(self) -> "RNNNetwork":
        """``to("cpu")``."""
        return self.to("cpu")

    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """Fresh parameters (and zero gradients), from `seed` if given."""
        if seed is not None:
            rnn_seq, head_seq = np.random.SeedSequence(V.check_seed("seed", seed)).spawn(2)
            self.rnn.reset_parameters(int(rnn_seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
            self._head_rng = np.random.default_rng(head_seq)
        else:
            self.rnn.reset_parameters()
        self._init_head()
        self._cache = None
        self._guard.set_pending(False)

    @property
    def dropout_rng(self) -> np.random.Generator:
        """The generator of dropout masks (see the layers)."""
        return self.rnn.dropout_rng

    @dropout_rng.setter
    def dropout_rng(self, value: np.random.Generator) -> None:
        self.rnn.dropout_rng = value

    @property
    def num_parameters(self) -> int:
        return int(sum(int(p.size) for p in self.params.values()))

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of every parameter, PyTorch-style names (embedding.*, rnn.*, output.*); host
        arrays, also for a network on the GPU."""
        return D.host_state_dict(self.params, self._specs)

    def load_state_dict(self, state: Any) -> None:
        """Copies parameters in (exact keys and shapes; nothing changes if any entry is wrong)."""
        checked = V.check_state_dict("state_dict", state, dict(self._specs), self.dtype)
        D.load_checked_params(self.params, checked, self._specs, self.dtype)

    def __getstate__(self) -> Dict[str, Any]:
        """For pickle and copy.deepcopy: everything but a training forward's cache, so a copy
        starts with no forward awaiting its backward (and a guard of its own). Device arrays are
        saved as host copies and moved back on load (the stack pickles its own)."""
        state = self.__dict__.copy()
        state["_cache"] = None
        if self.device != "cpu":
            state["params"] = {n: D.to_numpy(a) for n, a in self.params.items() if not n.startswith("rnn.")}
            state["grads"] = {n: D.to_numpy(a) for n, a in self.grads.items() if not n.startswith("rnn.")}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("device", "cpu")  # pickled before networks had a device
        if self.device != "cpu":
            self._move_head(D.to_device)
        self._link_rnn()

    def zero_grad(self) -> None:
        if self.device != "cpu":
            for g in self.grads.values():
                g.zero_()
            return
        V.zero_arrays("grads", self.grads)

    def train(self, mode: bool = True) -> "RNNNetwork":
        self.training = V.check_bool("mode", mode)
        self.rnn.train(self.training)
        return self

    def eval(self) -> "RNNNetwork":
        return self.train(False)

    # ---- state ------------------------------------------------------------------------------
    @property
    def has_cell_state(self) -> bool:
        return self.rnn._has_cell_state

    def init_state(self, batch_size: int) -> State:
        """Zero state for ``batch_size`` sequences: h ``[L*D, N, P]`` (LSTM cells: ``(h, c)``)."""
        N = V.check_size("batch_size", batch_size)
        groups = self.rnn.num_layers * self.rnn.num_directions
        h = np.zeros((groups, N, self.rnn.state_size), self.dtype)
        if self.has_cell_state:
            return h, np.zeros((groups, N, self.hidden_size), self.dtype)
        return h

    def _state_in(self, state: Any, N: int):
        if state is None:
            return None, None
        groups = self.rnn.num_layers * self.rnn.num_directions
        h, c = V.split_state("state", state, self.has_cell_state, f"cell {self.cell!r}", pair=("h", "c"))
        h_name = "state[0]" if c is not None else "state"
        h = V.as_float_array(h_name, h, self.dtype)
        V.check_shape(h_name, h, (groups, N, self.rnn.state_size), V.state_meaning(self.rnn._state_size_name))
        if c is not None:
            c = V.as_float_array("state[1]", c, self.dtype)
            V.check_shape("state[1]", c, (groups, N, self.hidden_size), V.state_meaning("hidden_size"))
        return h, c

    def _step_state(self, state: Any, N: int):
        """_state_in without its conversions when the state is already what a step returned."""
        rnn, dt = self.rnn, self.dtype
        shape = (rnn.num_layers * rnn.num_directions, N, rnn.state_size)
        if rnn._has_cell_state:
            if (type(state) is tuple and len(state) == 2 and _is_step_array(state[0], shape, dt)
                    and _is_step_array(state[1], shape[:2] + (self.hidden_size,), dt)):
                return state
        elif _is_step_array(state, shape, dt):
            return state, None
        return self._state_in(state, N)

    def _state_out(self, h: np.ndarray, c: Optional[np.ndarray]) -> State:
        return (h, c) if self.has_cell_state else h

    # ---- inputs -----------------------------------------------------------------------------
    def _inputs(self, inputs: Any, batch_first: bool) -> np.ndarray:
        """Time-major inputs for the core: int64 ids [T, N] or floats [T, N, C]."""
        if self.vocab_size:
            arr = V.as_token_array("inputs", inputs)
            V.check_rank("inputs", arr, (2,), "[N, T] of token ids" if batch_first else "[T, N] of token ids")
            if batch_first:
                arr = arr.T
        else:
            arr = V.as_float_array("inputs", inputs, self.dtype)
            V.check_rank("inputs", arr, (3,), "[N, T, input_size]" if batch_first else "[T, N, input_size]")
            if batch_first:
                arr = arr.transpose(1, 0, 2)
            if arr.shape[2] != self.input_size:
                raise ValueError(f"inputs: expected input_size {self.input_size} in the last dimension, got {arr.shape[2]}")
        V.check_not_empty("inputs", arr, ("sequence length T", "batch size N"))
        return V.c_array(arr)

    def _targets(self, targets: Any, T: int, N: int) -> np.ndarray:
        K = self.output_size
        seq = self.head == "sequence"
        if self.loss_kind == "cross_entropy":
            arr = V.as_token_array("targets", targets)
            shape = ((N, T) if self.batch_first else (T, N)) if seq else (N,)
            V.check_shape("targets", arr, shape, "(class ids, one per output)")
            if seq and self.batch_first:
                arr = arr.T
        else:
            arr = V.as_float_array("targets", targets, self.dtype)
            shape = ((N, T, K) if self.batch_first else (T, N, K)) if seq else (N, K)
            V.check_shape("targets", arr, shape, "(the shape of the outputs)")
            if seq and self.batch_first:
                arr = arr.transpose(1, 0, 2)
        return V.c_array(arr)

    def _run(self, inputs, state, lengths, targets, training, want_outputs, softmax, batch_first=None):
        batch_first = self.batch_first if batch_first is None else batch_first
        on_device = self.device != "cpu"
        prepare = self._device_forward_args if on_device else self._host_forward_args
        x, h0, c0, lengths_arr, t, params = prepare(inputs, state, lengths, targets, batch_first)
        call = _core.cuda_network_forward if on_device else _core.network_forward
        seed = 0
        if self.rnn._draws_seed(training):
            seed = int(self.rnn.dropout_rng.integers(0, 2**63))
        check = self.check_finite
        if check:  # on host copies of device arrays
            if not self.vocab_size:
                V.check_finite_input("inputs", _host(x))
            for name, arr in (("state", h0), ("state[1]", c0)):
                V.check_finite_input(name, _host(arr))
            if t is not None and t.dtype.kind == "f":
                V.check_finite_input("targets", _host(t))
            for (name, _), p in zip(self._specs, params):
                V.check_finite_input(f"params[{name!r}]", _host(p))
        if training:
            with self._guard.training_call("forward", forward=True):
                out, h_n, c_n, loss, cache = call(self._config, params, x, h0, c0, lengths_arr, t, True, seed,
                                                  want_outputs, softmax)
                self._cache = cache
                self._cache_batch_first = batch_first
                self._guard.set_pending(True)
        else:
            out, h_n, c_n, loss, _ = call(self._config, params, x, h0, c0, lengths_arr, t, False, seed, want_outputs,
                                          softmax)
        if check:
            host_out = _host(out)
            if host_out is not None and self.head == "sequence":
                found = V.first_nonfinite_step(host_out)
                if found is not None:
                    raise FloatingPointError(f"forward: the outputs became non-finite at step t={found[0]} "
                                             f"(batch element {found[1]}) from finite inputs and parameters")
            elif host_out is not None and not np.isfinite(host_out).all():
                raise FloatingPointError("forward: the outputs became non-finite from finite inputs and parameters")
            if loss is not None and not np.isfinite(loss):
                raise FloatingPointError(f"forward: the loss became {loss} from finite inputs, targets and parameters")
        if out is not None and self.head == "sequence" and batch_first:
            out = _swap_leading(out)
        return out, self._state_out(h_n, c_n), loss

    def _host_forward_args(self, inputs, state, lengths, targets, batch_first):
        """(x, h0, c0, lengths, targets, params) for _core.network_forward, checked on the host."""
        x = self._inputs(inputs, batch_first)
        T, N = x.shape[0], x.shape[1]
        h0, c0 = self._state_in(state, N)
        lengths_arr = None if lengths is None else V.check_lengths("lengths", lengths, N, T)
        t = None if targets is None else self._targets(targets, T, N)
        params = [V.check_owned_array(f"params[{n!r}]", self.params.get(n), s, self.dtype, writable=False)
                  for n, s in self._specs]
        return x, h0, c0, lengths_arr, t, params

    # ---- forward / loss / backward ---------------------------------------------------------
    def __call__(self, inputs: Any, state: Any = None, lengths: Any = None):
        return self.forward(inputs, state, lengths)

    def forward(self, inputs: Any, state: Any = None, lengths: Any = None) -> Tuple[np.ndarray, State]:
        """Outputs and final state. Outputs are logits (cross-entropy) or predictions (MSE),
        ``[T, N, K]`` (sequence head) or ``[N, K]`` (last head). In training mode the forward is
        kept for ``backward(d_outputs)``."""
        out, st, _ = self._run(inputs, state, lengths, None, self.training, True, False)
        return out, st

    def predict_proba(self, inputs: Any, state: Any = None, lengths: Any = None) -> Tuple[np.ndarray, State]:
        """Softmax probabilities (cross-entropy networks), without caching anything."""
        if self.loss_kind != "cross_entropy":
            raise ValueError(f"predict_proba: expected a cross_entropy network, got loss={self.loss_kind!r}")
        out, st, _ = self._run(inputs, state, lengths, None, False, True, True)
        return out, st

    def forward_loss(self, inputs: Any, targets: Any, state: Any = None, lengths: Any = None) -> Tuple[float, State]:
        """The loss (mean over valid targets) and the final state. In training mode the loss's
        gradient is kept, so ``backward()`` needs no argument."""
        _, st, loss = self._run(inputs, state, lengths, targets, self.training, False, False)
        return float(loss), st

    def evaluate(self, inputs: Any, targets: Any, state: Any = None, lengths: Any = None) -> Tuple[float, State]:
        """The loss without caching anything or applying dropout (the mode is left as it is)."""
        _, st, loss = self._run(inputs, state, lengths, targets, False, False, False)
        return float(loss), st

    def backward(self, d_outputs: Any = None, *, compute_dx: bool = False):
        """Backpropagates the last training forward: the fused loss's gradient (after
        ``forward_loss``/``train_step``) or ``d_outputs`` (after ``forward``). Gradients are
        **accumulated** into ``self.grads``. Returns the gradient of the initial state; with
        ``compute_dx=True`` (dense input only), ``(dx, dstate)`` where ``dx`` is the gradient of the
        forward's inputs, shaped like them."""
        compute_dx = V.check_bool("compute_dx", compute_dx)
        if compute_dx and self.vocab_size:
            raise ValueError("compute_dx: expected False for a token network (integer ids have no gradient; "
                             "it goes to embedding.weight), got True")
        if self._cache is None:
            raise RuntimeError("backward: expected a preceding training forward that has not been "
                               "backpropagated yet, got none")
        on_device = self.device != "cpu"
        d = None
        if d_outputs is not None:
            if on_device:
                T, N = self._cache.shape
                seq = self.head == "sequence"
                shape = (T, N, self.output_size) if seq else (N, self.output_size)
                d = self._device_float("d_outputs", d_outputs, shape, seq and self._cache_batch_first,
                                       "(the shape of the outputs)")
            else:
                d = V.as_float_array("d_outputs", d_outputs, self.dtype)
                if self.head == "sequence" and self._cache_batch_first and d.ndim == 3:
                    d = V.c_array(d.transpose(1, 0, 2))
        if on_device:
            grads = self._device_list("grads", self.grads)
        else:
            grads = [V.check_owned_array(f"grads[{n!r}]", self.grads.get(n), s, self.dtype, writable=True)
                     for n, s in self._specs]
        if self.check_finite:
            V.check_finite_input("d_outputs", _host(d))
        with self._guard.training_call("backward", forward=False):
            cache, self._cache = self._cache, None
            if cache is None:  # another thread's backward took it while this one validated
                raise RuntimeError("backward: expected a preceding training forward that has not been "
                                   "backpropagated yet, got none")
            self._guard.set_pending(False)
            call = _core.cuda_network_backward if on_device else _core.network_backward
            dx, dh0, dc0 = call(cache, grads, d, compute_dx)
        if self.check_finite:
            for (name, _), g in zip(self._specs, grads):
                if not np.isfinite(_host(g)).all():
                    raise FloatingPointError(f"backward: the gradient grads[{name!r}] became non-finite")
        if not compute_dx:
            return self._state_out(dh0, dc0)
        if self._cache_batch_first:
            dx = _swap_leading(dx)
        return dx, self._state_out(dh0, dc0)

    def train_step(self, inputs: Any, targets: Any, state: Any = None, lengths: Any = None) -> Tuple[float, State]:
        """Forward, loss and backward (gradients accumulated): the loss and the final state, which
        carries no gradient (pass it as the next chunk's state for truncated BPTT)."""
        loss, st = self.forward_loss(inputs, targets, state, lengths)
        if self.training:
            self.backward()
        return loss, st

    # ---- inference ------------------------------------------------------------------------
    def step(self, x_t: Any, state: Any = None) -> Tuple[np.ndarray, State]:
        """One timestep for N streams in one C++ call: ``x_t`` is ``[N]`` token ids (or ``[N, C]``
        features; a scalar id or a ``[C]`` vector for one stream); returns ``(y_t [N, K], state)``
        where ``y_t`` holds probabilities (cross-entropy) or predictions (MSE). No cache, no
        dropout. The state is plain arrays: copy it to branch. The stack computes in float32
        whatever ``precision`` is (as ``layer.step()``); ``stepper()`` steps at bfloat16 from
        weights converted once."""
        self._check_steppable("step")
        if self.device != "cpu":
            return self._step_device(x_t, state)
        x, h0, c0 = self._step_inputs(x_t, state)
        out, h_n, c_n = _core.network_step(self._config, [self.params[n] for n, _ in self._specs], x, h0, c0,
                                           self.loss_kind == "cross_entropy")
        return out, self._state_out(h_n, c_n)

    def stepper(self) -> "NetworkStepper":
        """A snapshot of this network for streaming: ``stepper().step(x_t, state)`` is ``step()``
        computed from copies of the parameters taken now; at ``precision="bfloat16"`` the layers'
        and the output layer's weight matrices are converted to bfloat16 and packed once, so a step
        computes what ``forward()`` at bfloat16 computes. Later changes to the network's
        parameters do not reach it until its ``refresh()`` (see ``layer.stepper()``). CPU only."""
        return NetworkStepper(self)

    def _check_steppable(self, what: str) -> None:
        if self.head != "sequence":
            raise ValueError(f"{what}: expected a network with head='sequence', got head='last'")
        if self.rnn.direction != "forward":
            raise ValueError(f"{what}: expected a forward network (a reverse direction needs the future), got "
                             f"direction={self.rnn.direction!r}")

    def _step_inputs(self, x_t: Any, state: Any):
        """(x [1, N] ids or [1, N, C], h0, c0) of a CPU step, checked."""
        x = x_t if type(x_t) is np.ndarray else np.asarray(x_t)
        per_step_rank = 0 if self.vocab_size else 1  # one stream: a token id, or a feature vector
        if x.ndim == per_step_rank:
            x = x[None]
        if self.vocab_size:
            if x.dtype != np.int64 or not x.flags.c_contiguous:
                x = V.as_token_array("x_t", x)
            V.check_rank("x_t", x, (1,), "[N] of token ids")
        else:
            if x.dtype != self.dtype or not x.flags.c_contiguous:
                x = V.as_float_array("x_t", x, self.dtype)
            V.check_rank("x_t", x, (2,), "[N, input_size]")
        x = x[None]
        N = x.shape[1]
        if N == 0:
            raise ValueError("x_t: expected batch size N >= 1, got an empty batch")
        h0, c0 = (None, None) if state is None else self._step_state(state, N)
        return x, h0, c0

    def generate(self, prefix: Any, n: int, temperature: float = 1.0, top_k: int = 0,
                 seed: Optional[int] = None, state: Any = None) -> np.ndarray:
        """Token ids sampled after ``prefix`` (a token network trained with cross_entropy over its
        vocabulary): ``n`` draws from softmax(logits / temperature) limited to the ``top_k`` most
        likely tokens (0: all; temperature 0: greedy). One C++ call; seeded."""
        if not self.vocab_size or self.loss_kind != "cross_entropy" or self.output_size != self.vocab_size:
            raise ValueError("generate: expected a token network with a cross_entropy output over its vocabulary")
        prefix_arr = V.as_token_array("prefix", prefix).reshape(-1)
        if prefix_arr.size == 0:
            raise ValueError("prefix: expected at least one token id, got none")
        n = V.check_non_negative("n", n)
        temperature = V.check_float("temperature", temperature)
        if temperature < 0:
            raise ValueError(f"temperature: expected a number >= 0, got {temperature}")
        top_k = V.check_non_negative("top_k", top_k)
        seed = V.check_seed("seed", seed)
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**63))
        if self.device != "cpu":
            h0, c0 = self._device_state_in(state, 1)
            tokens, _, _ = _core.cuda_network_generate(self._config, self._device_list("params", self.params),
                                                       V.c_array(prefix_arr, np.int64), n, temperature, top_k, seed,
                                                       h0, c0)
            return tokens
        h0, c0 = self._state_in(state, 1)
        params = [V.check_owned_array(f"params[{k!r}]", self.params.get(k), s, self.dtype, writable=False)
                  for k, s in self._specs]
        tokens, _, _ = _core.network_generate(self._config, params, V.c_array(prefix_arr, np.int64),
                                              n, temperature, top_k, seed, h0, c0)
        return tokens

    # ---- the same calls on the CUDA backend (to("cuda")) -------------------------------------
    # Host inputs are checked as on the CPU, then copied; device inputs are checked for dtype and
    # shape here and rearranged on the device (batch_first). Ids (tokens, class-id targets,
    # lengths) are checked on the host. check_finite copies what it scans to the host.
    def _device_list(self, label: str, arrays: Dict[str, Any]) -> list:
        return D.device_list(label, arrays, self._specs, self.dtype, "network")

    def _device_float(self, name: str, value: Any, shape: Tuple[int, ...], batch_first: bool, meaning: str):
        """A float array of `shape` (time-major) on the device: a device array checked (and its two
        leading axes swapped when batch_first), or anything else checked on the host and copied."""
        value = D.read_in_place(name, value, self.dtype)
        if D.is_device_array(value):
            given = (shape[1], shape[0]) + tuple(shape[2:]) if batch_first else shape
            D.check_device_array(name, value, self.dtype, given, meaning=meaning)
            return value.swapaxes01() if batch_first else value
        arr = V.as_float_array(name, value, self.dtype)
        given = (shape[1], shape[0]) + tuple(shape[2:]) if batch_first else shape
        V.check_shape(name, arr, given, meaning)
        return D.to_device(arr.transpose(1, 0, *range(2, arr.ndim)) if batch_first else arr)

    def _device_state_in(self, state: Any, N: int):
        if state is None:
            return None, None
        groups = self.rnn.num_layers * self.rnn.num_directions
        h, c = V.split_state("state", state, self.has_cell_state, f"cell {self.cell!r}", pair=("h", "c"))
        h_name = "state[0]" if c is not None else "state"
        h = self._device_float(h_name, h, (groups, N, self.rnn.state_size), False,
                               V.state_meaning(self.rnn._state_size_name))
        if c is not None:
            c = self._device_float("state[1]", c, (groups, N, self.hidden_size), False, V.state_meaning("hidden_size"))
        return h, c

    def _device_forward_args(self, inputs, state, lengths, targets, batch_first):
        """(x, h0, c0, lengths, targets, params) for _core.cuda_network_forward: device arrays
        checked here, host ones checked as on the CPU and copied; ids stay on the host."""
        if self.vocab_size:
            x = self._inputs(D.to_numpy(inputs) if D.is_device_array(inputs) else inputs, batch_first)
            T, N = x.shape
        else:
            value = D.read_in_place("inputs", inputs, self.dtype)
            if D.is_device_array(value):
                layout = "[N, T, input_size]" if batch_first else "[T, N, input_size]"
                D.check_device_array("inputs", value, self.dtype, ranks=(3,), meaning=layout)
                if value.shape[2] != self.input_size:
                    raise ValueError(f"inputs: expected input_size {self.input_size} in the last dimension, "
                                     f"got {value.shape[2]}")
                x = value.swapaxes01() if batch_first else value
                if x.shape[0] == 0 or x.shape[1] == 0:
                    raise ValueError(f"inputs: expected sequence length T >= 1 and batch size N >= 1, got shape "
                                     f"{V.shape_str(value.shape)}")
            else:
                x = D.to_device(self._inputs(inputs, batch_first))
            T, N = x.shape[0], x.shape[1]
        h0, c0 = self._device_state_in(state, N)
        lengths_arr = None
        if lengths is not None:
            lengths_arr = V.check_lengths("lengths", D.to_numpy(lengths) if D.is_device_array(lengths) else lengths,
                                          N, T)
        t = None
        if targets is not None:
            if self.loss_kind == "cross_entropy":
                t = self._targets(D.to_numpy(targets) if D.is_device_array(targets) else targets, T, N)
            else:
                seq = self.head == "sequence"
                shape = (T, N, self.output_size) if seq else (N, self.output_size)
                t = self._device_float("targets", targets, shape, seq and batch_first, "(the shape of the outputs)")
        return x, h0, c0, lengths_arr, t, self._device_list("params", self.params)

    def _step_device(self, x_t: Any, state: Any):
        if self.vocab_size:
            x = np.asarray(D.to_numpy(x_t) if D.is_device_array(x_t) else x_t)
            if x.ndim == 0:
                x = x[None]
            x = V.as_token_array("x_t", x)
            V.check_rank("x_t", x, (1,), "[N] of token ids")
            x = V.c_array(x[None])
            N = x.shape[1]
        else:
            xd = D.device_float_array("x_t", x_t, self.dtype)
            D.check_device_array("x_t", xd, self.dtype, ranks=(1, 2), meaning="[N, input_size] or [input_size]")
            if xd.ndim == 1:
                xd = xd.reshape((1, xd.shape[0]))
            if xd.shape[1] != self.input_size:
                raise ValueError(f"x_t: expected input_size {self.input_size} in the last dimension, got {xd.shape[1]}")
            N = xd.shape[0]
            x = xd.reshape((1, N, self.input_size))
        if N == 0:
            raise ValueError("x_t: expected batch size N >= 1, got an empty batch")
        h0, c0 = self._device_state_in(state, N)
        out, h_n, c_n, _, _ = _core.cuda_network_forward(
            self._config, self._device_list("params", self.params), x, h0, c0, None, None, False, 0, True,
            self.loss_kind == "cross_entropy")
        return out.reshape((N, self.output_size)), self._state_out(h_n, c_n)

    def __repr__(self) -> str:
        src = f"vocab_size={self.vocab_size}" if self.vocab_size else f"input_size={self.input_size}"
        text = (f"rnnkit.RNNNetwork({src}, cell={self.cell!r}, hidden_size={self.hidden_size}, "
                f"num_layers={self.rnn.num_layers}, output_size={self.output_size}, head={self.head!r}, "
                f"loss={self.loss_kind!r}"
                + ("" if self.rnn.precision == "float32" else f", precision={self.rnn.precision!r}") + ")")
        return text if self.device == "cpu" else f"{text}.to({self.device!r})"


class NetworkStepper(layers._StepSnapshot):
    """``network.step()`` from a snapshot of the network's parameters (``network.stepper()``),
    packed once in bfloat16 at ``precision="bfloat16"``; same arguments, results and checks as
    ``network.step()``; changes to the network after the snapshot reach it on ``refresh()``."""

    _what = "network"

    @staticmethod
    def _precision_of(owner: Any) -> str:
        return owner.rnn.precision

    @staticmethod
    def _pack(config: Any, params: Any) -> Any:
        return _core.pack_network_step(config, params)

    def step(self, x_t: Any, state: Any = None) -> Tuple[np.ndarray, State]:
        """As ``network.step(x_t, state)``, from the snapshot."""
        net = self._owner
        x, h0, c0 = net._step_inputs(x_t, state)
        ce = net.loss_kind == "cross_entropy"
        if self._snapshot is not None:
            out, h_n, c_n = _core.network_step_packed(self._snapshot, x, h0, c0, ce)
            return out, net._state_out(h_n, c_n)
        out, h_n, c_n = _core.network_step(net._config, self._params, x, h0, c0, ce)
        return out, net._state_out(h_n, c_n)
