"""Property-based and fuzz tests (hypothesis) of rnnkit's public API.

Valid random configurations -- every cell (Elman tanh/relu, LSTM with and without projection, both
GRU flavours, LayerNorm LSTM/GRU), 1-3 layers, either direction, float32/float64, batch_first,
unbatched input, variable lengths, given or zero initial states, small sizes -- run forward against
the NumPy reference (tests/reference.py) and backward against a directional finite difference of a
float64 twin; RNNNetwork configurations do the same for the loss. Valid but unusual arguments
(non-contiguous and negative-stride views, read-only arrays, other float dtypes, lists, arrays that
alias one another or earlier outputs) must give bit-for-bit the results of plain contiguous arrays.
Random invalid calls (wrong ranks, sizes, dtypes, state tuples, lengths, state_dicts, corrupted
checkpoint files, impossible sizes) must end in the documented exception naming the argument --
never a crash, a hang or a silently wrong answer; NaN/Inf inputs must follow IEEE arithmetic row by
row.

Every example is counted (``CASE_COUNTS``: "valid" cases checked against an oracle, "invalid" cases
tried). The default profile is small, derandomized and reproducible for CI; ``tests/fuzz_run.py``
runs the same tests with ``RNNKIT_FUZZ_EXAMPLES`` examples in total, randomly, each test in its own
process so that a crash of the compiled module is reported as a crash (see tests/README.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import struct
import sys
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed: the fuzz tests are skipped")
from hypothesis import HealthCheck, Phase, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnnkit  # noqa: E402
from conftest import STACK_REFERENCE_RTOL  # noqa: E402
from reference import max_relative_diff, stack_forward  # noqa: E402
from rnnkit.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from test_layers import CELLS, make  # noqa: E402
from test_network import log_softmax  # noqa: E402

# ---- tolerances ---------------------------------------------------------------------------------
# Outputs are compared as max|got - want| / max(max|want|, OUTPUT_SCALE_FLOOR) (scaled_error): relative
# to the array's scale, but never to less than the O(1) scale of the cells' own values (gates in
# [0, 1], tanh in [-1, 1]): a projection or output layer can cancel O(1) terms down to a tiny result
# that still carries their absolute float32 rounding.
OUTPUT_SCALE_FLOOR = 1.0
# Forward of the LayerNorm cells vs the float64 reference. LayerNorm divides by sqrt(var + 1e-5): a
# row whose values are nearly equal (tiny hidden sizes make that common) amplifies rounding up to
# 1/sqrt(1e-5) ~ 316x per LayerNorm, so STACK_REFERENCE_RTOL is too tight there; the reference itself
# run in float32 shows errors of the same size. Seen: <= 4.4e-5 (float32), <= 1.9e-13 (float64).
LAYERNORM_RTOL = {np.float32: 1e-3, np.float64: 1e-10}
# float64 gradients vs finite differences along one random direction v of every input and parameter:
# |<g, v> - fd| <= rtol * sum(|g| * |v|) + the differences' own error estimate (see directional_check);
# <= 5e-8 seen.
DIRECTIONAL_RTOL = 1e-6
DIRECTIONAL_EPS = 1e-7
# float32 gradients vs those of the float64 twin (checked by finite differences), all gradient
# entries together: max|g32 - g64| / max|g64|. Plain cells: rounding through <= 3 layers x 6 steps
# (<= 2.1e-5 seen). LayerNorm cells: near-constant rows amplify float32 rounding by up to 316x per
# LayerNorm, and backward passes two in series (<= 1.6e-3 seen). A LayerNorm LSTM with hidden_size 1
# is left out: LN(c) over a single value is a constant, so every gradient through c is exactly 0 and
# the float32 one is pure amplified rounding (up to ~3e-2 of the largest gradient); its float64
# twin's gradients are still checked by finite differences.
GRADIENT_F32_RTOL = 1e-3
GRADIENT_F32_RTOL_LAYERNORM = 1e-2
# A float32 LayerNorm case can be ill-conditioned far beyond those bounds: a cancellation (two cell
# values equal to 4 digits) feeding a LayerNorm whose row variance is below its 1e-5 epsilon, chained
# over layers and steps, lets float32 rounding move an output by 10% (the reference run in float32
# does the same). Each such case measures its own conditioning: every input and parameter of the
# float64 computation is moved by one float32 rounding (relative 2^-24, random signs), and float32
# results may differ from float64 by CONDITIONING_FACTOR times that movement on top of the fixed
# tolerance (rounding happens at every operation, not only at the inputs, hence the factor).
FLOAT32_ROUNDING = 2.0**-24
CONDITIONING_FACTOR = 100.0
# Elman-ReLU is not differentiable where a pre-activation is 0 (exactly 0 is common: a layer whose
# units are all negative feeds zeros, without bias, to the next). When the one-sided differences
# disagree by more than this (relative), the point sits on a kink and only the forward is checked.
KINK_RTOL = 1e-4

# ---- example counts -----------------------------------------------------------------------------
FUZZ_EXAMPLES_ENV = "RNNKIT_FUZZ_EXAMPLES"  # total examples over all tests (the dedicated run)
FUZZ_COUNTS_ENV = "RNNKIT_FUZZ_COUNTS"      # a JSON file the case counters are written to
# CI examples per test; the dedicated run scales them so that they sum to RNNKIT_FUZZ_EXAMPLES.
CI_EXAMPLES = {
    "layer_forward_backward": 60,
    "network_loss_backward": 40,
    "input_forms": 20,
    "aliasing": 20,
    "bad_x": 30,
    "bad_state": 30,
    "bad_lengths": 25,
    "bad_backward": 20,
    "nan_inf": 25,
    "read_only_params_grads": 10,
    "bad_state_dict": 25,
    "bad_network_call": 30,
    "corrupt_checkpoint": 40,
    "huge_constructor": 10,
    "huge_broadcast_input": 6,
    "huge_output": 3,
}

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
# CI: reproducible (derandomized), no example database written anywhere.
settings.register_profile("rnnkit-ci", derandomize=True, database=None, deadline=None, print_blob=False,
                          suppress_health_check=_SUPPRESSED)
# The dedicated run: random, many examples; print_blob lets a failure be replayed with
# @hypothesis.reproduce_failure.
settings.register_profile("rnnkit-fuzz", derandomize=False, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_SUPPRESSED)


def _fuzz_total() -> Optional[int]:
    raw = os.environ.get(FUZZ_EXAMPLES_ENV)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{FUZZ_EXAMPLES_ENV}: expected a positive integer, got {raw!r}")
    return int(raw)


def fuzz_settings(test: str) -> settings:
    """The settings of one test: its CI count, or its share of RNNKIT_FUZZ_EXAMPLES."""
    total = _fuzz_total()
    if total is None:
        return settings(settings.get_profile("rnnkit-ci"), max_examples=CI_EXAMPLES[test])
    share = math.ceil(total * CI_EXAMPLES[test] / sum(CI_EXAMPLES.values()))
    return settings(settings.get_profile("rnnkit-fuzz"), max_examples=share)


CASE_COUNTS: Dict[str, Dict[str, int]] = {}


def count_case(test: str, kind: str) -> None:
    """Counts one generated case of `test` as "valid" (checked against an oracle) or "invalid"
    (a bad or special input tried). With RNNKIT_FUZZ_COUNTS set (tests/fuzz_run.py) the counts are
    written after every case, so a crash of the process loses none of them."""
    CASE_COUNTS.setdefault(test, {"valid": 0, "invalid": 0})[kind] += 1
    path = os.environ.get(FUZZ_COUNTS_ENV)
    if path:
        with open(path, "w") as f:
            json.dump(CASE_COUNTS, f, sort_keys=True)


# ---- helpers ------------------------------------------------------------------------------------
def assert_refused(call: Callable[[], Any], expected: Tuple[type, ...], names: Sequence[str]) -> str:
    """`call` raises one of `expected` whose message starts with one of the argument `names`
    (rnnkit's "name: expected ..., got ..." / "name[i]: ..." form). Returns the message."""
    with pytest.raises(expected) as info:
        call()
    message = str(info.value)
    assert any(re.match(re.escape(n) + r"(\[|:| )", message) for n in names), (
        f"{type(info.value).__name__} message does not name {list(names)}: {message!r}")
    return message


SIZE_IN_MESSAGE = re.compile(r"\d+(\.\d*)? ?(bytes|[KMGTPE]iB)")


def assert_memory_error_names_size(call: Callable[[], Any]) -> None:
    with pytest.raises(MemoryError) as info:
        call()
    assert SIZE_IN_MESSAGE.search(str(info.value)), f"MemoryError without the size asked for: {str(info.value)!r}"


GUARD_AVAILABLE = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")
GUARD_HEADROOM = 512 * 2**20


def _asan_aborts_on_failed_allocation() -> bool:
    """Under AddressSanitizer (.ci/sanitize preloads it) a failed or oversized allocation aborts the
    whole process unless ASAN_OPTIONS has allocator_may_return_null=1."""
    try:
        with open("/proc/self/maps") as f:
            asan = "libasan" in f.read()
    except OSError:
        return False
    return asan and "allocator_may_return_null=1" not in os.environ.get("ASAN_OPTIONS", "")


needs_memory_guard = pytest.mark.skipif(
    not GUARD_AVAILABLE, reason="needs Linux RLIMIT_AS and /proc to bound the memory it may take")
needs_failing_allocations = pytest.mark.skipif(
    _asan_aborts_on_failed_allocation(),
    reason="AddressSanitizer aborts on a failed allocation: set ASAN_OPTIONS=allocator_may_return_null=1")


@contextlib.contextmanager
def address_space_guard(headroom: int = GUARD_HEADROOM) -> Iterator[None]:
    """Caps this process's address space at its current size + `headroom` for the block: a call
    that really tries to allocate an impossible size then fails (MemoryError) here instead of being
    OOM-killed with the rest of the machine's work."""
    import resource

    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def physical_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def as_tuple(state: Any) -> Tuple[np.ndarray, ...]:
    return state if isinstance(state, tuple) else (state,)


def forward_rtol(dtype: Any, layer_norm: bool) -> float:
    """The forward tolerance vs the float64 reference (scaled_error)."""
    dtype = np.dtype(dtype).type
    return LAYERNORM_RTOL[dtype] if layer_norm else STACK_REFERENCE_RTOL[dtype]


def scaled_error(got: np.ndarray, want: np.ndarray) -> float:
    """max|got - want| / max(max|want|, OUTPUT_SCALE_FLOOR) (0 for empty arrays)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), OUTPUT_SCALE_FLOOR))


def gradient_difference(grads: Dict[str, np.ndarray], grads64: Dict[str, np.ndarray]) -> float:
    """max_relative_diff over every gradient entry at once."""
    got = np.concatenate([grads[k].astype(np.float64).ravel() for k in sorted(grads64)])
    want = np.concatenate([grads64[k].ravel() for k in sorted(grads64)])
    return max_relative_diff(got, want)


def rounding_moved(a: Optional[np.ndarray], rng: np.random.Generator) -> Optional[np.ndarray]:
    """`a` as float64 with every entry moved by one float32 rounding (relative 2^-24, random sign)."""
    if a is None:
        return None
    a = np.asarray(a, np.float64)
    return a * (1 + FLOAT32_ROUNDING * rng.choice((-1.0, 1.0), size=a.shape))


LAYER_NORM_CELLS = ("ln_lstm", "ln_gru")


# ---- valid layer configurations -----------------------------------------------------------------
INITS = ("default", "xavier", "orthogonal", "xavier+orthogonal", "identity")


@dataclass(frozen=True)
class LayerCase:
    cell: str  # a key of test_layers.CELLS ("lstm_proj": an LSTM with proj_size)
    input_size: int
    hidden_size: int
    proj_size: int
    num_layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    dtype: type
    init: str
    seed: int
    T: int
    N: int
    unbatched: bool
    lengths: Optional[Tuple[int, ...]]
    with_state: bool

    @property
    def groups(self) -> int:
        return self.num_layers * (2 if self.bidirectional else 1)

    @property
    def P(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def width(self) -> int:
        return (2 if self.bidirectional else 1) * self.P

    def build(self, dtype: Optional[type] = None):
        """(layer, reference mode); LayerNorm parameters perturbed away from 1/0 (test_layers.make)."""
        name = "lstm" if self.cell == "lstm_proj" else self.cell
        kw: Dict[str, Any] = dict(num_layers=self.num_layers, bidirectional=self.bidirectional,
                                  batch_first=self.batch_first, bias=self.bias, init=self.init)
        if self.proj_size:
            kw["proj_size"] = self.proj_size
        return make(name, self.input_size, self.hidden_size, dtype=dtype or self.dtype, seed=self.seed, **kw)

    def x_shape(self) -> Tuple[int, ...]:
        if self.unbatched:
            return (self.T, self.input_size)
        return (self.N, self.T, self.input_size) if self.batch_first else (self.T, self.N, self.input_size)

    def y_shape(self) -> Tuple[int, ...]:
        if self.unbatched:
            return (self.T, self.width)
        return (self.N, self.T, self.width) if self.batch_first else (self.T, self.N, self.width)

    def state_shape(self, width: int) -> Tuple[int, ...]:
        return (self.groups, width) if self.unbatched else (self.groups, self.N, width)

    @property
    def has_c(self) -> bool:
        return self.cell in ("lstm", "lstm_proj", "ln_lstm")

    def to_time_major(self, a: np.ndarray) -> np.ndarray:
        """[T, N, ...] from the user layout of x, y or dx."""
        if self.unbatched:
            return a[:, None]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def from_time_major(self, a: np.ndarray) -> np.ndarray:
        if self.unbatched:
            return a[:, 0]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def state_to_batched(self, s: Optional[np.ndarray]) -> Optional[np.ndarray]:
        return None if s is None else (s[:, None] if self.unbatched else s)


@st.composite
def layer_cases(draw, max_T: int = 6, max_N: int = 4, max_C: int = 6, max_H: int = 6, max_layers: int = 3) -> LayerCase:
    cell = draw(st.sampled_from(sorted(CELLS)))
    H = draw(st.integers(2 if cell == "lstm_proj" else 1, max_H))
    unbatched = draw(st.booleans())
    T = draw(st.integers(1, max_T))
    N = 1 if unbatched else draw(st.integers(1, max_N))
    lengths = None
    if not unbatched and draw(st.booleans()):
        lengths = tuple(draw(st.lists(st.integers(0, T), min_size=N, max_size=N)))
    return LayerCase(
        cell=cell, input_size=draw(st.integers(1, max_C)), hidden_size=H,
        proj_size=draw(st.integers(1, H - 1)) if cell == "lstm_proj" else 0,
        num_layers=draw(st.integers(1, max_layers)), bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()), bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float32, np.float64])), init=draw(st.sampled_from(INITS)),
        seed=draw(st.integers(0, 2**16)), T=T, N=N, unbatched=unbatched, lengths=lengths,
        with_state=draw(st.booleans()),
    )


@dataclass
class LayerData:
    x: np.ndarray                 # user layout, the layer's dtype
    h0: Optional[np.ndarray]      # user layout (None: zeros)
    c0: Optional[np.ndarray]
    lengths: Optional[np.ndarray]

    def state(self):
        if self.h0 is None:
            return None
        return (self.h0, self.c0) if self.c0 is not None else self.h0


def layer_data(case: LayerCase, seed: int) -> LayerData:
    """Seeded standard-normal x (and initial states with `with_state`) in the case's dtype."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape()).astype(case.dtype)
    h0 = c0 = None
    if case.with_state:
        h0 = rng.standard_normal(case.state_shape(case.P)).astype(case.dtype)
        if case.has_c:
            c0 = rng.standard_normal(case.state_shape(case.hidden_size)).astype(case.dtype)
    lengths = None if case.lengths is None else np.array(case.lengths)
    return LayerData(x, h0, c0, lengths)


def reference_outputs(case: LayerCase, params: Dict[str, np.ndarray], mode: str, data: LayerData):
    """(y, h_n, c_n) of tests/reference.py in the user layout (float64)."""
    y, h_n, c_n = stack_forward(mode, params, case.to_time_major(data.x), case.num_layers, case.bidirectional,
                                case.state_to_batched(data.h0), case.state_to_batched(data.c0), data.lengths)
    unbatch = (lambda s: s[:, 0]) if case.unbatched else (lambda s: s)
    return case.from_time_major(y), unbatch(h_n), None if c_n is None else unbatch(c_n)


def split_state(case: LayerCase, state) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    return (state[0], state[1]) if case.has_c else (state, None)


def padded_steps_are_zero(case: LayerCase, a: np.ndarray) -> bool:
    if case.lengths is None:
        return True
    a_tm = case.to_time_major(a)
    return all(np.all(a_tm[L:, n] == 0) for n, L in enumerate(case.lengths))


# ---- directional derivative -----------------------------------------------------------------------
def directional_check(grads: Dict[str, np.ndarray], loss: Callable[[Dict[str, np.ndarray]], float],
                      point: Dict[str, np.ndarray], rng: np.random.Generator, kinks: bool) -> None:
    """float64 `grads`: sum_k <grads[k], v_k> against the derivative of `loss` along one random
    direction v over every entry of `point` that has a gradient.

    The derivative is a Richardson extrapolation of central differences (error O(h^4)), taken at
    h = eps and h = eps/4; their difference estimates the finite difference's own error (truncation
    where LayerNorm over nearly equal values makes the loss sharply curved, rounding where the
    gradient is small) and is allowed on top of DIRECTIONAL_RTOL * sum(|g| * |v|)."""
    direction = {k: rng.standard_normal(point[k].shape) for k in grads}
    cache: Dict[float, float] = {}

    def along(step: float) -> float:
        if step not in cache:
            cache[step] = loss({k: (p + step * direction[k] if k in direction else p) for k, p in point.items()})
        return cache[step]

    def richardson(h: float) -> float:
        wide = (along(h) - along(-h)) / (2 * h)
        narrow = (along(h / 2) - along(-h / 2)) / h
        return (4 * narrow - wide) / 3

    eps = DIRECTIONAL_EPS
    numeric = richardson(eps / 4)
    fd_error = abs(richardson(eps) - numeric)
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in grads)
    scale = sum(float(np.sum(np.abs(grads[k] * direction[k]))) for k in grads)
    if kinks:
        right, left = (along(eps) - along(0.0)) / eps, (along(0.0) - along(-eps)) / eps
        if abs(right - left) > KINK_RTOL * max(scale, abs(numeric), 1e-300):
            return  # a ReLU pre-activation at (or within eps of) 0: no derivative to compare with
    assert abs(analytic - numeric) <= DIRECTIONAL_RTOL * scale + fd_error + 1e-300, (
        f"directional derivative: backward gives {analytic!r}, finite differences {numeric!r} "
        f"(their own error ~{fd_error:.2g}; scale {scale:.3g})")


def layer_loss_fn(case: LayerCase, twin, data: LayerData, Ry, Rh, Rc):
    """The scalar L = <y, Ry> + <h_n, Rh> + <c_n, Rc> of the float64 twin as a function of
    {x, h0, c0, every parameter}."""
    def loss(point: Dict[str, np.ndarray]) -> float:
        for name in twin.params:
            np.copyto(twin.params[name], point["param:" + name])
        state = (point["h0"], point["c0"]) if case.has_c else point["h0"]
        y, s = twin(point["x"], state, data.lengths)
        h_n, c_n = split_state(case, s)
        total = float(np.sum(y * Ry)) + float(np.sum(h_n * Rh))
        if case.has_c:
            total += float(np.sum(c_n * Rc))
        return total
    return loss


# ---- 1. valid layer calls against the reference -------------------------------------------------
@fuzz_settings("layer_forward_backward")
@given(case=layer_cases(), data_seed=st.integers(0, 2**32 - 1), which=st.sampled_from(("dy", "dh_n", "both")),
       compute_dx=st.booleans(), deterministic=st.booleans())
def test_layer_forward_matches_reference_and_backward_matches_finite_differences(case, data_seed, which,
                                                                                  compute_dx, deterministic):
    """A random valid layer call: y, h_n (c_n) match tests/reference.py, padded steps are exactly 0;
    backward returns finite gradients of the right shapes (zero at padded steps), and they match
    finite differences (float64: directly; float32: through the float64 twin's gradients)."""
    count_case("layer_forward_backward", "valid")
    layer, mode = case.build()
    data = layer_data(case, data_seed)
    before = rnnkit.get_deterministic()
    rnnkit.set_deterministic(deterministic)
    try:
        y, state = layer(data.x, data.state(), data.lengths)
    finally:
        rnnkit.set_deterministic(before)
    h_n, c_n = split_state(case, state)
    y_ref, h_ref, c_ref = reference_outputs(case, layer.params, mode, data)
    layer_norm = case.cell in LAYER_NORM_CELLS
    conditioned = layer_norm and case.dtype == np.float32  # see CONDITIONING_FACTOR
    moved_rng = np.random.default_rng(data_seed + 2)
    moved_params = {k: rounding_moved(v, moved_rng) for k, v in layer.params.items()}
    moved_data = LayerData(rounding_moved(data.x, moved_rng), rounding_moved(data.h0, moved_rng),
                           rounding_moved(data.c0, moved_rng), data.lengths)
    tol = forward_rtol(case.dtype, layer_norm)
    if conditioned:
        moved = reference_outputs(case, moved_params, mode, moved_data)
        tol += CONDITIONING_FACTOR * max(scaled_error(m, r) for m, r in zip(moved, (y_ref, h_ref, c_ref))
                                         if r is not None)
    assert y.dtype == case.dtype and y.shape == case.y_shape() and h_n.shape == case.state_shape(case.P)
    assert scaled_error(y, y_ref) < tol, "y"
    assert scaled_error(h_n, h_ref) < tol, "h_n"
    if case.has_c:
        assert c_n.shape == case.state_shape(case.hidden_size)
        assert scaled_error(c_n, c_ref) < tol, "c_n"
    assert padded_steps_are_zero(case, y), "outputs at padded steps must be exactly 0"

    rng = np.random.default_rng(data_seed + 1)
    Ry = rng.standard_normal(y.shape) if which != "dh_n" else np.zeros(y.shape)
    Rh = rng.standard_normal(h_n.shape) if which != "dy" else np.zeros(h_n.shape)
    Rc = None
    if case.has_c:
        Rc = rng.standard_normal(c_n.shape) if which != "dy" else np.zeros(c_n.shape)
    dh_arg: Any = None
    if which != "dy":
        dh_arg = (Rh, Rc) if case.has_c else Rh
    dy_arg = Ry if which != "dh_n" else None
    grads = layer_backward(case, layer, dy_arg, dh_arg, compute_dx)
    for name, g in grads.items():
        assert np.all(np.isfinite(g)), name
    if compute_dx:
        assert grads["x"].shape == data.x.shape and grads["x"].dtype == case.dtype
        assert padded_steps_are_zero(case, grads["x"]), "padded steps must get exactly zero input gradient"
    assert grads["h0"].shape == case.state_shape(case.P)
    if case.has_c:
        assert grads["c0"].shape == case.state_shape(case.hidden_size)
    for name, p in layer.params.items():
        assert grads["param:" + name].shape == p.shape and grads["param:" + name].dtype == p.dtype, name

    def twin_gradients(params: Dict[str, np.ndarray], d: LayerData) -> Dict[str, np.ndarray]:
        """Training forward + the same backward on a float64 twin with these parameters and data."""
        twin64, _ = case.build(np.float64)
        twin64.load_state_dict(params)
        twin64(d.x, d.state(), d.lengths)
        return layer_backward(case, twin64, dy_arg, dh_arg, compute_dx)

    data64 = LayerData(data.x.astype(np.float64), None if data.h0 is None else data.h0.astype(np.float64),
                       None if data.c0 is None else data.c0.astype(np.float64), data.lengths)
    grads64 = grads
    if case.dtype == np.float32:
        # The twin's own gradients face the finite differences; the float32 ones face the twin's.
        grads64 = twin_gradients(layer.state_dict(), data64)
        rtol = GRADIENT_F32_RTOL_LAYERNORM if layer_norm else GRADIENT_F32_RTOL
        if conditioned:
            rtol += CONDITIONING_FACTOR * gradient_difference(twin_gradients(moved_params, moved_data), grads64)
        if not (case.cell == "ln_lstm" and case.hidden_size == 1):
            error = gradient_difference(grads, grads64)
            assert error <= rtol, f"float32 gradients differ from float64 ones by {error:.3g} (rtol {rtol:.3g})"

    twin, _ = case.build(np.float64)
    twin.load_state_dict(layer.state_dict())
    twin.eval()
    point: Dict[str, Any] = {"param:" + k: v.astype(np.float64) for k, v in layer.params.items()}
    point["x"] = data64.x
    point["h0"] = np.zeros(case.state_shape(case.P)) if data.h0 is None else data64.h0
    point["c0"] = None
    if case.has_c:
        point["c0"] = np.zeros(case.state_shape(case.hidden_size)) if data.c0 is None else data64.c0
    if mode == "RNN_RELU" and not case.with_state:
        # Zero biases (bias=False, or init="identity"), a zero initial state and a layer input row of
        # zeros give a pre-activation of exactly 0; moving h0 off zero moves it onto the ReLU kink
        # (relu'(0) = 0 by convention, while a difference quotient averages both sides). Parameters
        # cannot move it: they multiply zeros.
        grads64 = {k: g for k, g in grads64.items() if k != "h0"}
    directional_check(grads64, layer_loss_fn(case, twin, data, Ry, Rh, Rc), point, rng, kinks=mode == "RNN_RELU")


def layer_backward(case: LayerCase, layer, dy: Any, dh_n: Any, compute_dx: bool) -> Dict[str, np.ndarray]:
    """backward of `layer`'s last forward: {"x", "h0", "c0", "param:<name>"} (fresh zero grads before)."""
    dx, dstate = layer.backward(dy, dh_n, compute_dx=compute_dx)
    dh0, dc0 = split_state(case, dstate)
    grads = {"param:" + k: v for k, v in layer.grads.items()}
    grads["h0"] = dh0
    if case.has_c:
        grads["c0"] = dc0
    if compute_dx:
        grads["x"] = dx
    else:
        assert dx is None
    return grads


# ---- 2. valid network calls against the reference -----------------------------------------------
NETWORK_MODES = {"rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU", "lstm": "LSTM", "gru": "GRU",
                 "gru_reset_before": "GRU_RESET_BEFORE", "ln_lstm": "LN_LSTM", "ln_gru": "LN_GRU"}


@dataclass(frozen=True)
class NetworkCase:
    tokens: bool
    vocab_size: Optional[int]
    embedding_dim: Optional[int]
    input_size: Optional[int]
    cell: str
    hidden_size: int
    proj_size: int
    num_layers: int
    bidirectional: bool
    output_size: int
    head: str
    loss: str
    ignore_index: int
    batch_first: bool
    dtype: str
    seed: int
    T: int
    N: int
    lengths: Optional[Tuple[int, ...]]
    with_state: bool

    def build(self, dtype: Optional[str] = None) -> rnnkit.RNNNetwork:
        return rnnkit.RNNNetwork(
            vocab_size=self.vocab_size, embedding_dim=self.embedding_dim, input_size=self.input_size,
            hidden_size=self.hidden_size, output_size=self.output_size, cell=self.cell,
            num_layers=self.num_layers, bidirectional=self.bidirectional, proj_size=self.proj_size,
            head=self.head, loss=self.loss, ignore_index=self.ignore_index, batch_first=self.batch_first,
            dtype=dtype or self.dtype, seed=self.seed)


@st.composite
def network_cases(draw, max_T: int = 6, max_N: int = 4) -> NetworkCase:
    tokens = draw(st.booleans())
    cell = draw(st.sampled_from(sorted(NETWORK_MODES)))
    H = draw(st.integers(1, 6))
    proj = draw(st.integers(0, H - 1)) if cell == "lstm" else 0
    T = draw(st.integers(1, max_T))
    N = draw(st.integers(1, max_N))
    lengths = tuple(draw(st.lists(st.integers(1, T), min_size=N, max_size=N))) if draw(st.booleans()) else None
    loss = draw(st.sampled_from(("cross_entropy", "mse")))
    return NetworkCase(
        tokens=tokens, vocab_size=draw(st.integers(1, 7)) if tokens else None,
        embedding_dim=draw(st.integers(1, 5)) if tokens else None,
        input_size=None if tokens else draw(st.integers(1, 5)), cell=cell, hidden_size=H, proj_size=proj,
        num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
        output_size=draw(st.integers(2 if loss == "cross_entropy" else 1, 5)),
        head=draw(st.sampled_from(("sequence", "last"))), loss=loss, ignore_index=draw(st.sampled_from((-100, -1))),
        batch_first=draw(st.booleans()), dtype=draw(st.sampled_from(("float32", "float64"))),
        seed=draw(st.integers(0, 2**16)), T=T, N=N, lengths=lengths, with_state=draw(st.booleans()))


def network_problem(case: NetworkCase, net: rnnkit.RNNNetwork, seed: int):
    """(inputs, targets, state) in the network's layout; at least one target counts."""
    rng = np.random.default_rng(seed)
    T, N, K = case.T, case.N, case.output_size
    if case.tokens:
        inputs_tm = rng.integers(0, case.vocab_size, (T, N))
    else:
        inputs_tm = rng.standard_normal((T, N, case.input_size)).astype(case.dtype)
    seq = case.head == "sequence"
    if case.loss == "cross_entropy":
        targets_tm = rng.integers(0, K, (T, N) if seq else (N,))
        ignored = rng.random(targets_tm.shape) < 0.3
        targets_tm = np.where(ignored, case.ignore_index, targets_tm)
        targets_tm.reshape(-1)[0] = 0  # one target that counts (step 0 is valid for every length)
    else:
        targets_tm = rng.standard_normal((T, N, K) if seq else (N, K)).astype(case.dtype)
    state = None
    if case.with_state:
        groups = net.rnn.num_layers * net.rnn.num_directions
        h = rng.standard_normal((groups, N, net.rnn.state_size)).astype(case.dtype)
        state = (h, rng.standard_normal((groups, N, case.hidden_size)).astype(case.dtype)) if net.has_cell_state else h
    inputs, targets = inputs_tm, targets_tm
    if case.batch_first:
        inputs = np.ascontiguousarray(np.swapaxes(inputs_tm, 0, 1))
        if seq:
            targets = np.ascontiguousarray(np.swapaxes(targets_tm, 0, 1))
    return inputs, targets, state, inputs_tm, targets_tm


def reference_network_loss(case: NetworkCase, params: Dict[str, np.ndarray], inputs_tm, targets_tm, state):
    """The network's loss and final state from tests/reference.py (float64)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    x = p["embedding.weight"][inputs_tm] if case.tokens else inputs_tm.astype(np.float64)
    h0 = c0 = None
    if state is not None:
        h0, c0 = state if isinstance(state, tuple) else (state, None)
    rnn_state = {k[4:]: v for k, v in p.items() if k.startswith("rnn.")}
    y, h_n, c_n = stack_forward(NETWORK_MODES[case.cell], rnn_state, x, case.num_layers, case.bidirectional,
                                h0, c0, case.lengths)
    D = 2 if case.bidirectional else 1
    if case.head == "sequence":
        feats = y
    else:
        feats = np.concatenate([h_n[(case.num_layers - 1) * D + d] for d in range(D)], axis=-1)
    out = feats @ p["output.weight"].T + p["output.bias"]
    counted = np.ones(out.shape[:-1], bool)
    if case.head == "sequence" and case.lengths is not None:
        counted = np.arange(case.T)[:, None] < np.asarray(case.lengths)[None, :]
    if case.loss == "cross_entropy":
        counted = counted & (targets_tm != case.ignore_index)
        picked = np.take_along_axis(log_softmax(out), np.where(counted, targets_tm, 0)[..., None], axis=-1)[..., 0]
        loss = float(-(picked * counted).sum() / counted.sum())
    else:
        loss = float((((out - targets_tm) ** 2) * counted[..., None]).sum() / (counted.sum() * case.output_size))
    return loss, h_n, c_n


@fuzz_settings("network_loss_backward")
@given(case=network_cases(), data_seed=st.integers(0, 2**32 - 1))
def test_network_loss_matches_reference_and_backward_matches_finite_differences(case, data_seed):
    """A random RNNNetwork (token or dense input, any cell, head and loss): forward_loss and the
    final state match the reference network; backward's gradients are finite, shaped like the
    parameters and states, and match finite differences (float32 through the float64 twin)."""
    count_case("network_loss_backward", "valid")
    net = case.build()
    inputs, targets, state, inputs_tm, targets_tm = network_problem(case, net, data_seed)
    loss, final = net.forward_loss(inputs, targets, state, case.lengths)
    want, h_ref, c_ref = reference_network_loss(case, net.params, inputs_tm, targets_tm, state)
    layer_norm = case.cell in LAYER_NORM_CELLS
    conditioned = layer_norm and case.dtype == "float32"  # see CONDITIONING_FACTOR
    moved_rng = np.random.default_rng(data_seed + 2)
    moved_params = {k: rounding_moved(v, moved_rng) for k, v in net.params.items()}
    moved_state = None if state is None else tuple(rounding_moved(a, moved_rng) for a in as_tuple(state))
    if moved_state is not None and not net.has_cell_state:
        moved_state = moved_state[0]
    moved_inputs_tm = inputs_tm if case.tokens else rounding_moved(inputs_tm, moved_rng)
    # The loss is a mean of O(1) terms: its rounding is relative to max(|loss|, 1).
    loss_scale = max(abs(want), 1.0)
    tol = forward_rtol(net.dtype, layer_norm)
    if conditioned:
        moved_loss, moved_h, moved_c = reference_network_loss(case, moved_params, moved_inputs_tm, targets_tm,
                                                              moved_state)
        tol += CONDITIONING_FACTOR * max(abs(moved_loss - want) / loss_scale, scaled_error(moved_h, h_ref),
                                         0.0 if c_ref is None else scaled_error(moved_c, c_ref))
    assert math.isfinite(loss)
    assert abs(loss - want) <= tol * loss_scale, (loss, want)
    h_n, c_n = final if net.has_cell_state else (final, None)
    assert scaled_error(h_n, h_ref) < tol
    if net.has_cell_state:
        assert scaled_error(c_n, c_ref) < tol

    grads = network_backward(net)
    assert grads["h0"].shape == h_n.shape
    if net.has_cell_state:
        assert grads["c0"].shape == c_n.shape
    for name, g in grads.items():
        assert np.all(np.isfinite(g)), name
    for name, p in net.params.items():
        assert grads["param:" + name].shape == p.shape and grads["param:" + name].dtype == p.dtype, name

    def user_layout(inputs_time_major: np.ndarray) -> np.ndarray:
        return np.swapaxes(inputs_time_major, 0, 1) if case.batch_first else inputs_time_major

    def twin_gradients(params: Dict[str, np.ndarray], inputs_tm_: np.ndarray, state_: Any) -> Dict[str, np.ndarray]:
        """forward_loss + backward on a float64 twin with these parameters, inputs and state."""
        twin64 = case.build("float64")
        twin64.load_state_dict(params)
        inputs_ = user_layout(inputs_tm_ if case.tokens else inputs_tm_.astype(np.float64))
        twin64.forward_loss(inputs_, targets, state_, case.lengths)
        return network_backward(twin64)

    state64 = None if state is None else (tuple(a.astype(np.float64) for a in state) if net.has_cell_state
                                          else state.astype(np.float64))
    grads64 = grads
    if case.dtype == "float32":
        # The twin's own gradients face the finite differences; the float32 ones face the twin's.
        grads64 = twin_gradients(net.state_dict(), inputs_tm, state64)
        rtol = GRADIENT_F32_RTOL_LAYERNORM if layer_norm else GRADIENT_F32_RTOL
        if conditioned:
            moved_grads = twin_gradients(moved_params, moved_inputs_tm, moved_state)
            rtol += CONDITIONING_FACTOR * gradient_difference(moved_grads, grads64)
        if not (case.cell == "ln_lstm" and case.hidden_size == 1):
            error = gradient_difference(grads, grads64)
            assert error <= rtol, f"float32 gradients differ from float64 ones by {error:.3g} (rtol {rtol:.3g})"

    twin = case.build("float64")
    twin.load_state_dict(net.state_dict())
    point: Dict[str, Any] = {"param:" + k: v.astype(np.float64) for k, v in net.params.items()}
    point["h0"] = np.zeros(h_n.shape) if state is None else as_tuple(state64)[0]
    if net.has_cell_state:
        point["c0"] = np.zeros(c_n.shape) if state is None else state64[1]
    twin_inputs = user_layout(inputs_tm if case.tokens else inputs_tm.astype(np.float64))

    def twin_loss(pt: Dict[str, np.ndarray]) -> float:
        for name in twin.params:
            np.copyto(twin.params[name], pt["param:" + name])
        twin_state = (pt["h0"], pt["c0"]) if twin.has_cell_state else pt["h0"]
        return twin.evaluate(twin_inputs, targets, twin_state, case.lengths)[0]

    directional_check(grads64, twin_loss, point, np.random.default_rng(data_seed + 1), kinks=case.cell == "rnn_relu")


def network_backward(net: rnnkit.RNNNetwork) -> Dict[str, np.ndarray]:
    """backward of the fused loss: {"h0", "c0", "param:<name>"}."""
    dstate = net.backward()
    dh0, dc0 = dstate if net.has_cell_state else (dstate, None)
    grads = {"param:" + k: v for k, v in net.grads.items()}
    grads["h0"] = dh0
    if net.has_cell_state:
        grads["c0"] = dc0
    return grads


# ---- 3. valid unusual input forms: bit-for-bit the result of contiguous arrays ---------------------
FLOAT_FORMS = ("contiguous", "fortran", "strided", "negative_strides", "transposed_base", "read_only",
               "float16", "float64", "longdouble", "list", "misaligned")


def float_form(values: np.ndarray, form: str, rng: np.random.Generator) -> Any:
    """`values` (exactly representable in float16) as the given kind of array or list."""
    if form == "contiguous":
        return values.copy()
    if form == "fortran":
        return np.asfortranarray(values)
    if form == "strided":
        buf = np.full(tuple(2 * s for s in values.shape), np.nan, values.dtype)
        view = buf[tuple(slice(None, None, 2) for _ in values.shape)]
        view[...] = values
        return view
    if form == "negative_strides":
        flip = tuple(slice(None, None, -1) if rng.random() < 0.7 else slice(None) for _ in values.shape)
        return np.ascontiguousarray(values[flip])[flip]
    if form == "transposed_base":
        return np.ascontiguousarray(values.T).T
    if form == "read_only":
        arr = values.copy()
        arr.flags.writeable = False
        return arr
    if form == "float16":
        return values.astype(np.float16)
    if form == "float64":
        return values.astype(np.float64)
    if form == "longdouble":
        return values.astype(np.longdouble)
    if form == "list":
        return values.tolist()
    if form == "misaligned":
        raw = np.zeros(values.nbytes + values.itemsize, np.uint8)
        view = raw[1:1 + values.nbytes].view(values.dtype).reshape(values.shape)
        view[...] = values
        return view
    raise AssertionError(form)


INT_FORMS = ("list", "tuple", "int32", "uint8", "negative_strides", "read_only", "numpy_ints")


def int_form(values: Tuple[int, ...], form: str) -> Any:
    if form == "list":
        return list(values)
    if form == "tuple":
        return tuple(values)
    if form == "int32":
        return np.array(values, np.int32)
    if form == "uint8":
        return np.array(values, np.uint8)
    if form == "negative_strides":
        return np.array(values[::-1], np.int64)[::-1]
    if form == "read_only":
        arr = np.array(values)
        arr.flags.writeable = False
        return arr
    if form == "numpy_ints":
        return [np.int16(v) for v in values]
    raise AssertionError(form)


def float16_exact(rng: np.random.Generator, shape: Tuple[int, ...], dtype: type) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float16).astype(dtype)


def snapshot(value: Any) -> Any:
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else value


def unchanged(before: Any, after: Any) -> bool:
    if isinstance(before, np.ndarray):
        return np.array_equal(before, after, equal_nan=True)
    return before == after


@fuzz_settings("input_forms")
@given(case=layer_cases(max_T=5, max_N=3, max_layers=2), data_seed=st.integers(0, 2**32 - 1),
       x_form=st.sampled_from(FLOAT_FORMS), h_form=st.sampled_from(FLOAT_FORMS),
       c_form=st.sampled_from(FLOAT_FORMS), dy_form=st.sampled_from(FLOAT_FORMS),
       dh_form=st.sampled_from(FLOAT_FORMS), lengths_form=st.sampled_from(INT_FORMS))
def test_views_read_only_and_other_float_forms_give_identical_results(case, data_seed, x_form, h_form, c_form,
                                                                      dy_form, dh_form, lengths_form):
    """Every argument as a non-contiguous, negative-stride, misaligned, Fortran-ordered or read-only
    view, another float dtype or a nested list (lengths as lists, tuples, other int dtypes): forward,
    backward and the gradients equal, bit for bit, those of contiguous arrays; no input is modified."""
    count_case("input_forms", "valid")
    rng = np.random.default_rng(data_seed)
    x = float16_exact(rng, case.x_shape(), case.dtype)
    h0 = float16_exact(rng, case.state_shape(case.P), case.dtype) if case.with_state else None
    c0 = float16_exact(rng, case.state_shape(case.hidden_size), case.dtype) if case.with_state and case.has_c else None
    dy = float16_exact(rng, case.y_shape(), case.dtype)
    dh = float16_exact(rng, case.state_shape(case.P), case.dtype)

    def run(x_arg, h_arg, c_arg, lengths_arg, dy_arg, dh_arg):
        layer, _ = case.build()
        state = None if h_arg is None else ((h_arg, c_arg) if case.has_c else h_arg)
        y, s = layer(x_arg, state, lengths_arg)
        dx, ds = layer.backward(dy_arg, dh_arg)
        return [y, *as_tuple(s), dx, *as_tuple(ds), *(layer.grads[k] for k in sorted(layer.grads))]

    expected = run(x, h0, c0, case.lengths, dy, dh)
    dh_arg = float_form(dh, dh_form, rng)
    if case.has_c and dh_form == "list":
        # A bare list is read as a (dh_n, dc_n) pair for LSTM cells (see
        # test_lstm_dh_n_as_a_nested_list_means_dh_n_only); the tuple form is unambiguous.
        dh_arg = (dh_arg, None)
    args = [float_form(x, x_form, rng), None if h0 is None else float_form(h0, h_form, rng),
            None if c0 is None else float_form(c0, c_form, rng),
            None if case.lengths is None else int_form(case.lengths, lengths_form),
            float_form(dy, dy_form, rng), dh_arg]
    before = [snapshot(a) for a in args]
    got = run(*args)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)
    assert all(unchanged(b, a) for b, a in zip(before, args)), "rnnkit modified an input array"


@pytest.mark.parametrize("cell", ["lstm", "ln_lstm"])
@pytest.mark.parametrize("groups", [1, 2])
def test_lstm_dh_n_as_a_nested_list_means_dh_n_only(cell, groups):
    """README: nested lists of floats are accepted wherever arrays are, and backward's docstring says
    a bare (non-tuple) dh_n means dh_n only. For LSTM cells a nested-list dh_n is taken for a
    (dh_n, dc_n) pair instead: refused with a misleading message (length 1 or 3+) or, when
    num_layers * num_directions == 2, misread as dh_n = list[0], dc_n = list[1]."""
    count_case("input_forms", "valid")
    layer, _ = make(cell, 3, 4, num_layers=groups, dtype=np.float64)
    clean, _ = make(cell, 3, 4, num_layers=groups, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    dh = np.random.default_rng(1).standard_normal((groups, 2, 4))
    for target in (layer, clean):
        target(x)
    dx, _ = layer.backward(None, dh.tolist())
    dx_clean, _ = clean.backward(None, dh)
    np.testing.assert_array_equal(dx, dx_clean)


# ---- 4. aliasing: outputs are owned, inputs may alias each other and earlier outputs --------------
@fuzz_settings("aliasing")
@given(case=layer_cases(max_T=5, max_N=3, max_layers=2), data_seed=st.integers(0, 2**32 - 1),
       scribble_after_forward=st.booleans())
def test_aliasing_inputs_and_outputs_is_safe(case, data_seed, scribble_after_forward):
    """Outputs are fresh writable arrays that later calls leave alone; a call may take earlier
    outputs as inputs (one array as both h0 and c0, y as the next x, y as dy, h_n as dh_n) and
    overwrite its inputs and the parameters between forward and backward: the results equal those
    of a twin fed copies."""
    count_case("aliasing", "valid")
    data = layer_data(case, data_seed)
    layer, _ = case.build()
    clean, _ = case.build()

    # Call 1. Its outputs are fresh, writable arrays that later calls must leave alone (no pooled
    # buffer handed out twice).
    y1, s1 = layer(data.x, data.state(), data.lengths)
    outputs1 = (y1, *as_tuple(s1))
    kept = [a.copy() for a in outputs1]
    assert all(a.flags.writeable and a.flags.c_contiguous for a in outputs1)

    # Call 2 takes call 1's outputs as inputs: its final state as the initial state (h0 and c0 one
    # array when they have the same width) and, when the widths allow, its y as x.
    h_in, c_in = split_state(case, s1)
    if case.has_c and case.P == case.hidden_size:
        c_in = h_in
    state_in = (h_in, c_in) if case.has_c else h_in
    x2 = y1 if case.y_shape() == case.x_shape() else data.x[::-1].copy()
    x2_copy = x2.copy()
    state_copy = tuple(a.copy() for a in state_in) if case.has_c else h_in.copy()
    y2, s2 = layer(x2, state_in, data.lengths)
    y2c, s2c = clean(x2_copy, state_copy, data.lengths)
    for got, want in zip(outputs1, kept):
        np.testing.assert_array_equal(got, want, err_msg="a later call changed an earlier output or its own input")
    for got, want in zip((y2, *as_tuple(s2)), (y2c, *as_tuple(s2c))):
        np.testing.assert_array_equal(got, want)

    if scribble_after_forward:
        # forward keeps its own copies of what backward needs (README): overwriting its inputs and
        # the parameters between forward and backward changes no gradient.
        for a in (x2, *as_tuple(state_in)):
            a[...] = 7.0
        for p in layer.params.values():
            p[...] = -3.0
    # backward(dy=y, dh_n=the returned state): the forward's own outputs passed straight back.
    dx, ds = layer.backward(y2, s2)
    dxc, dsc = clean.backward(y2c.copy(), tuple(a.copy() for a in s2c) if case.has_c else s2c.copy())
    for got, want in zip((dx, *as_tuple(ds)), (dxc, *as_tuple(dsc))):
        np.testing.assert_array_equal(got, want)
    for k in layer.grads:
        np.testing.assert_array_equal(layer.grads[k], clean.grads[k], err_msg=k)
    np.testing.assert_array_equal(y2, y2c, err_msg="backward changed the dy it was given")


# ---- 5. invalid x ---------------------------------------------------------------------------------
NON_FLOAT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
                    "complex64", "complex128", "object", "U3", "S3", "datetime64[s]", "timedelta64[s]", "V8")


@st.composite
def bad_x(draw, case: LayerCase):
    """(bad x, expected exception class) for a layer built from `case`."""
    kind = draw(st.sampled_from(("dtype", "rank", "input_size", "empty", "none", "ragged", "scalar", "string")))
    shape = list(case.x_shape())
    if kind == "dtype":
        dtype = draw(st.sampled_from(NON_FLOAT_DTYPES))
        return np.zeros(shape, dtype), TypeError
    if kind == "rank":
        ndim = draw(st.sampled_from((0, 1, 4, 5)))
        return np.zeros(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)), case.dtype), ValueError
    if kind == "input_size":
        shape[-1] = draw(st.integers(0, 9).filter(lambda c: c != case.input_size))
        return np.zeros(shape, case.dtype), ValueError
    if kind == "empty":
        axes = [0] if case.unbatched else draw(st.sampled_from(([0], [1], [0, 1])))
        for a in axes:
            shape[a] = 0
        return np.zeros(shape, case.dtype), ValueError
    if kind == "none":
        return None, TypeError
    if kind == "ragged":
        return [[0.5] * case.input_size, [0.5] * (case.input_size + 1)], TypeError
    if kind == "scalar":
        # Within float32's range: casting a larger float64 to float32 makes NumPy warn (overflow).
        return draw(st.floats(allow_nan=False, allow_infinity=False, width=32)), ValueError
    return draw(st.text(max_size=5)), TypeError


def check_layer_still_works(layer, x: np.ndarray, state: Any, lengths: Any, want: np.ndarray) -> None:
    """A refused call leaves the layer as it was: the same valid call gives the same output."""
    y, _ = layer(x, state, lengths)
    np.testing.assert_array_equal(y, want)


@fuzz_settings("bad_x")
@given(case=layer_cases(max_layers=2), data=st.data())
def test_bad_x_is_refused_naming_x(case, data):
    """A bad x (non-float dtype, wrong rank, wrong input_size, T or N of 0, None, ragged, scalar,
    string) raises TypeError/ValueError starting "x"; the layer stays as it was."""
    count_case("bad_x", "invalid")
    layer, _ = case.build()
    good = layer_data(case, case.seed)
    y_before, _ = layer(good.x, good.state(), good.lengths)
    x, exc = data.draw(bad_x(case))
    assert_refused(lambda: layer(x, good.state(), good.lengths), (exc,), ["x"])
    check_layer_still_works(layer, good.x, good.state(), good.lengths, y_before)


# ---- 6. invalid states ------------------------------------------------------------------------------
@st.composite
def bad_state(draw, case: LayerCase):
    """(bad h0 argument, expected exception, argument names the message may start with)."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal(case.state_shape(case.P)).astype(case.dtype)
    c = rng.standard_normal(case.state_shape(case.hidden_size)).astype(case.dtype)

    def wrong_shape(shape: Tuple[int, ...]) -> Tuple[int, ...]:
        kind = draw(st.sampled_from(("groups", "batch", "width", "rank_down", "rank_up")))
        s = list(shape)
        if kind == "groups":
            s[0] = draw(st.integers(1, 7).filter(lambda g: g != shape[0]))
        elif kind == "batch" and len(s) == 3:
            s[1] = draw(st.integers(1, 6).filter(lambda n: n != shape[1]))
        elif kind == "width" or kind == "batch":
            s[-1] = draw(st.integers(1, 8).filter(lambda w: w != shape[-1]))
        elif kind == "rank_down":
            s = s[1:]
        else:
            s = s[:1] + [1] + s[1:]
        return tuple(s)

    if case.has_c:
        kind = draw(st.sampled_from(("array", "short_tuple", "long_tuple", "none_h", "none_c", "bad_h_shape",
                                     "bad_c_shape", "int_h", "complex_c", "string")))
        if kind == "array":
            return h, TypeError, ["h0"]
        if kind == "short_tuple":
            return (h,), TypeError, ["h0"]
        if kind == "long_tuple":
            return (h, c, c), TypeError, ["h0"]
        if kind == "none_h":
            return (None, c), TypeError, ["h0"]
        if kind == "none_c":
            return (h, None), TypeError, ["h0"]
        if kind == "bad_h_shape":
            return (np.zeros(wrong_shape(h.shape), case.dtype), c), ValueError, ["h0"]
        if kind == "bad_c_shape":
            return (h, np.zeros(wrong_shape(c.shape), case.dtype)), ValueError, ["c0"]
        if kind == "int_h":
            return (h.astype(np.int32), c), TypeError, ["h0"]
        if kind == "complex_c":
            return (h, c.astype(np.complex64)), TypeError, ["c0"]
        return "zeros", TypeError, ["h0"]
    kind = draw(st.sampled_from(("tuple", "bad_shape", "int", "bool", "string", "object")))
    if kind == "tuple":
        return (h, h), TypeError, ["h0"]
    if kind == "bad_shape":
        return np.zeros(wrong_shape(h.shape), case.dtype), ValueError, ["h0"]
    if kind == "int":
        return h.astype(np.int64), TypeError, ["h0"]
    if kind == "bool":
        return h > 0, TypeError, ["h0"]
    if kind == "string":
        return "zeros", TypeError, ["h0"]
    return h.astype(object), TypeError, ["h0"]


@fuzz_settings("bad_state")
@given(case=layer_cases(max_layers=2), data=st.data())
def test_bad_initial_state_is_refused_naming_it(case, data):
    """A bad h0 (an array where an (h0, c0) tuple is needed and vice versa, tuples of the wrong
    length, None entries, wrong shapes, non-float dtypes) raises TypeError/ValueError naming h0 or
    c0; the layer stays as it was."""
    count_case("bad_state", "invalid")
    layer, _ = case.build()
    good = layer_data(case, case.seed)
    y_before, _ = layer(good.x, good.state(), good.lengths)
    state, exc, names = data.draw(bad_state(case))
    assert_refused(lambda: layer(good.x, state, good.lengths), (exc,), names)
    check_layer_still_works(layer, good.x, good.state(), good.lengths, y_before)


# ---- 7. invalid lengths -------------------------------------------------------------------------------
@st.composite
def bad_lengths(draw, case: LayerCase):
    """(bad lengths, expected exception) for a batched input of `case`."""
    T, N = case.T, case.N
    # (0 is a valid length: a sequence of length 0 ends in zeros, test_zero_lengths.py.)
    kind = draw(st.sampled_from(("too_long", "negative", "huge", "uint_max", "count", "rank",
                                 "scalar", "float", "bool", "string", "complex", "python_bigint", "ragged")))
    valid = list(draw(st.lists(st.integers(1, T), min_size=N, max_size=N)))
    i = draw(st.integers(0, N - 1))
    if kind in ("too_long", "negative", "huge", "uint_max"):
        bad = {"too_long": draw(st.integers(T + 1, T + 100)), "negative": draw(st.integers(-2**63, -1)),
               "huge": draw(st.integers(T + 1, 2**63 - 1)), "uint_max": 2**64 - 1}[kind]
        dtype = np.uint64 if kind == "uint_max" else np.int64
        arr = np.array(valid, dtype)
        arr[i] = bad
        return arr, ValueError
    if kind == "count":
        n = draw(st.integers(0, N + 3).filter(lambda n: n != N))
        return np.ones(n, np.int64), ValueError
    if kind == "rank":
        return np.array(valid)[None, :], ValueError
    if kind == "scalar":
        return np.int64(T), ValueError
    if kind == "float":
        return np.array(valid, np.float64), TypeError
    if kind == "bool":
        return np.ones(N, bool), TypeError
    if kind == "string":
        return [str(v) for v in valid], TypeError
    if kind == "complex":
        return np.array(valid, np.complex128), TypeError
    if kind == "python_bigint":
        big = list(valid)
        big[i] = 2**70
        return big, TypeError
    return [valid, valid + [1]], TypeError  # ragged


@fuzz_settings("bad_lengths")
@given(case=layer_cases(max_layers=2), data=st.data())
def test_bad_lengths_are_refused_naming_them(case, data):
    """Bad lengths (out of [0, T], huge, the wrong count or rank, non-integer dtypes, Python ints
    beyond int64, ragged lists, any lengths with an unbatched input) raise TypeError/ValueError
    naming lengths; the layer stays as it was."""
    count_case("bad_lengths", "invalid")
    layer, _ = case.build()
    good = layer_data(case, case.seed)
    y_before, _ = layer(good.x, good.state(), good.lengths)
    if case.unbatched:
        lengths, exc = [case.T], ValueError  # lengths with an unbatched [T, C] input
    else:
        lengths, exc = data.draw(bad_lengths(case))
    assert_refused(lambda: layer(good.x, good.state(), lengths), (exc,), ["lengths"])
    check_layer_still_works(layer, good.x, good.state(), good.lengths, y_before)


# ---- 8. invalid backward calls ---------------------------------------------------------------------
@st.composite
def bad_backward(draw, case: LayerCase):
    """(dy, dh_n, expected exception, names) for backward after a valid forward of `case`."""
    y_shape, h_shape = case.y_shape(), case.state_shape(case.P)
    dy = np.ones(y_shape, case.dtype)
    kind = draw(st.sampled_from(("dy_shape", "dy_rank", "dy_dtype", "dh_shape", "dh_dtype", "neither",
                                 "dh_tuple", "dc_shape", "dy_none_string")))
    if kind == "dy_shape":
        s = list(y_shape)
        axis = draw(st.integers(0, len(s) - 1))
        s[axis] += draw(st.integers(1, 3))
        return np.ones(s, case.dtype), None, ValueError, ["dy"]
    if kind == "dy_rank":
        return np.ones(y_shape + (1,), case.dtype), None, ValueError, ["dy"]
    if kind == "dy_dtype":
        return np.ones(y_shape, draw(st.sampled_from(NON_FLOAT_DTYPES[:-1]))), None, TypeError, ["dy"]
    if kind == "dh_shape":
        s = list(h_shape)
        s[-1] += 1
        return dy, np.ones(s, case.dtype), ValueError, ["dh_n"]
    if kind == "dh_dtype":
        return dy, np.ones(h_shape, np.int16), TypeError, ["dh_n"]
    if kind == "neither":
        return None, ((None, None) if case.has_c else None), ValueError, ["backward"]
    if kind == "dh_tuple":
        if case.has_c:
            return dy, (None, None, None), TypeError, ["dh_n"]
        return dy, (np.ones(h_shape), np.ones(h_shape)), TypeError, ["dh_n"]
    if kind == "dc_shape" and case.has_c:
        s = list(case.state_shape(case.hidden_size))
        s[0] += 1
        return dy, (None, np.ones(s, case.dtype)), ValueError, ["dc_n"]
    return "ones", None, TypeError, ["dy"]


@fuzz_settings("bad_backward")
@given(case=layer_cases(max_layers=2), data=st.data())
def test_bad_backward_arguments_are_refused_and_the_forward_stays_usable(case, data):
    """Bad dy/dh_n (shapes, ranks, dtypes, tuples, neither given) raise TypeError/ValueError naming
    them and consume nothing: the next valid backward equals an untouched twin's. A second backward,
    or one after an eval-mode forward, raises RuntimeError."""
    count_case("bad_backward", "invalid")
    good = layer_data(case, case.seed)
    layer, _ = case.build()
    clean, _ = case.build()
    for target in (layer, clean):
        target(good.x, good.state(), good.lengths)
    dy, dh_n, exc, names = data.draw(bad_backward(case))
    assert_refused(lambda: layer.backward(dy, dh_n), (exc,), names)
    # The refused call consumed nothing: the same valid backward as on an untouched layer.
    dy_ok = np.random.default_rng(1).standard_normal(case.y_shape())
    dx, _ = layer.backward(dy_ok)
    dx_clean, _ = clean.backward(dy_ok)
    np.testing.assert_array_equal(dx, dx_clean)
    for k in layer.grads:
        np.testing.assert_array_equal(layer.grads[k], clean.grads[k])
    # Each forward is backpropagated once; eval-mode forwards keep nothing to backpropagate.
    with pytest.raises(RuntimeError, match="backward"):
        layer.backward(dy_ok)
    layer.eval()
    layer(good.x, good.state(), good.lengths)
    with pytest.raises(RuntimeError, match="backward"):
        layer.backward(dy_ok)


# ---- 9. NaN and Inf -----------------------------------------------------------------------------------
@fuzz_settings("nan_inf")
@given(case=layer_cases(max_layers=2), data_seed=st.integers(0, 2**32 - 1), data=st.data(),
       value=st.sampled_from((math.nan, math.inf, -math.inf)), where=st.sampled_from(("x", "h0", "c0")))
def test_nan_and_inf_follow_ieee_arithmetic_row_by_row(case, data_seed, data, value, where):
    """README "Input rules" says nothing about NaN/Inf: they are computed with, as IEEE arithmetic
    does. A NaN gives NaN exactly where the float64 reference has NaN; rows (sequences) without a
    non-finite input are unaffected and match the reference; nothing crashes, backward included."""
    count_case("nan_inf", "invalid")
    if where == "c0" and not case.has_c:
        where = "h0"
    if where != "x":
        case = replace(case, with_state=True)
    layer, mode = case.build()
    d = layer_data(case, data_seed)
    n = data.draw(st.integers(0, case.N - 1))
    if where == "x":
        limit = case.T if case.lengths is None else case.lengths[n]
        assume(limit > 0)  # a sequence of length 0 reads no input at all
        t = data.draw(st.integers(0, limit - 1))  # a valid step: padded steps are ignored (tested elsewhere)
        c = data.draw(st.integers(0, case.input_size - 1))
        case.to_time_major(d.x)[t, n, c] = value
    else:
        target = d.h0 if where == "h0" else d.c0
        g = data.draw(st.integers(0, case.groups - 1))
        j = data.draw(st.integers(0, target.shape[-1] - 1))
        case.state_to_batched(target)[g, n, j] = value
    y, state = layer(d.x, d.state(), d.lengths)
    h_n, c_n = split_state(case, state)
    with np.errstate(all="ignore"):  # the reference meets inf - inf and friends on purpose
        y_ref, h_ref, c_ref = reference_outputs(case, layer.params, mode, d)
    assert padded_steps_are_zero(case, y)
    tol = forward_rtol(case.dtype, case.cell in LAYER_NORM_CELLS)
    pairs = [(case.to_time_major(y), case.to_time_major(y_ref), 1), (case.state_to_batched(h_n),
             case.state_to_batched(h_ref), 1)]
    if case.has_c:
        pairs.append((case.state_to_batched(c_n), case.state_to_batched(c_ref), 1))
    others = [m for m in range(case.N) if m != n]
    for got, want, axis in pairs:
        got_rows, want_rows = np.take(got, others, axis=axis), np.take(want, others, axis=axis)
        assert np.all(np.isfinite(got_rows)), "a non-finite input leaked into another sequence"
        assert scaled_error(got_rows, want_rows) < tol
        if math.isnan(value):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN pattern differs from IEEE")
            finite = np.isfinite(want)
            assert scaled_error(got[finite], want[finite]) < tol
    dy = np.random.default_rng(data_seed).standard_normal(y.shape)
    dx, _ = layer.backward(dy)
    dx_tm = case.to_time_major(dx)
    assert np.all(np.isfinite(np.take(dx_tm, others, axis=1))), "a non-finite input leaked into another row's dx"


# ---- 10. read-only parameters and gradients ------------------------------------------------------
@fuzz_settings("read_only_params_grads")
@given(case=layer_cases(max_layers=2), data=st.data(), optimizer=st.sampled_from(("SGD", "Adam", "RMSprop")))
def test_read_only_params_are_read_and_written_arrays_must_be_writable(case, data, optimizer):
    """Read-only parameters are fine for forward and backward, which only read them. Whatever
    writes into a read-only parameter or gradient refuses with ValueError naming it and changes
    nothing: the optimizer step (its step count included: Adam's bias correction uses it),
    load_state_dict (documented to change nothing when it refuses), backward, zero_grad, clipping."""
    count_case("read_only_params_grads", "invalid")
    good = layer_data(case, case.seed)
    layer, _ = case.build()
    clean, _ = case.build()
    names = sorted(layer.params)
    frozen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    for k in frozen:
        layer.params[k].flags.writeable = False
    dy = np.ones(case.y_shape())
    for target in (layer, clean):
        target(good.x, good.state(), good.lengths)
        target.backward(dy)
    for k in names:
        np.testing.assert_array_equal(layer.grads[k], clean.grads[k])

    before = layer.state_dict()
    opt = getattr(rnnkit.optim, optimizer)(layer, lr=0.1)
    assert_refused(opt.step, (ValueError,), ["params"])
    assert opt.step_count == 0, "a refused optimizer step still advanced step_count"
    assert_refused(lambda: layer.load_state_dict({k: v + 1 for k, v in before.items()}), (ValueError,),
                   ["params", "state_dict"])
    for k, v in before.items():
        np.testing.assert_array_equal(layer.params[k], v, err_msg=f"a refused write changed {k}")

    for k in frozen:
        layer.params[k].flags.writeable = True
    ro_grad = data.draw(st.sampled_from(names))
    layer.grads[ro_grad].flags.writeable = False
    layer(good.x, good.state(), good.lengths)
    assert_refused(lambda: layer.backward(dy), (ValueError,), [f"grads[{ro_grad!r}]"])
    assert_refused(layer.zero_grad, (ValueError,), ["grads"])
    assert_refused(lambda: rnnkit.optim.clip_grad_norm(layer, 1e-3), (ValueError,), ["grads"])


# ---- 11. state_dicts with wrong keys, shapes, dtypes --------------------------------------------------
@st.composite
def corrupted_state_dict(draw, good: Dict[str, np.ndarray]):
    """(state, expected exception or None when the mutation is valid)."""
    state = dict(good)
    key = draw(st.sampled_from(sorted(good)))
    kind = draw(st.sampled_from(("missing", "extra", "renamed", "shape", "rank", "dtype", "none", "string",
                                 "ragged", "not_mapping", "float16", "list", "negative_strides")))
    if kind == "missing":
        del state[key]
        return state, ValueError
    if kind == "extra":
        # "_reverse" names a real key of a bidirectional layer: overwriting it would be a valid dict.
        extra = key + draw(st.sampled_from(("_extra", "_reverse", ".weight", "x")))
        state[extra if extra not in good else key + "_extra"] = good[key]
        return state, ValueError
    if kind == "renamed":
        state[key.upper()] = state.pop(key)
        return state, ValueError
    if kind == "shape":
        s = list(good[key].shape)
        axis = draw(st.integers(0, len(s) - 1))
        s[axis] += draw(st.sampled_from((-1, 1, 2))) if s[axis] > 1 else 1
        state[key] = np.zeros(s, good[key].dtype)
        return state, ValueError
    if kind == "rank":
        state[key] = good[key][None]
        return state, ValueError
    if kind == "dtype":
        state[key] = good[key].astype(draw(st.sampled_from(("int32", "int64", "bool", "complex128", "object"))))
        return state, TypeError
    if kind == "none":
        state[key] = None
        return state, TypeError
    if kind == "string":
        state[key] = "weights"
        return state, TypeError
    if kind == "ragged":
        state[key] = [[1.0], [1.0, 2.0]]
        return state, TypeError
    if kind == "not_mapping":
        return list(good.items()), TypeError
    # Valid forms of the same values.
    if kind == "float16":
        state[key] = good[key].astype(np.float16)
    elif kind == "list":
        state[key] = good[key].tolist()
    else:
        state[key] = np.ascontiguousarray(good[key][::-1])[::-1]
    return state, None


@fuzz_settings("bad_state_dict")
@given(case=layer_cases(max_layers=2), net_case=network_cases(), use_network=st.booleans(), data=st.data())
def test_bad_state_dicts_are_refused_and_change_nothing(case, net_case, use_network, data):
    """load_state_dict (layers and networks) with missing, extra or renamed keys, wrong shapes,
    ranks or dtypes, non-arrays or a non-mapping raises TypeError/ValueError naming state_dict and
    changes no parameter; float16, lists and negative-stride views of the right values load."""
    count_case("bad_state_dict", "invalid")
    model = net_case.build() if use_network else case.build()[0]
    donor = (replace(net_case, seed=net_case.seed + 1).build() if use_network
             else replace(case, seed=case.seed + 1).build()[0])
    good = donor.state_dict()
    good = {k: v.astype(np.float16).astype(v.dtype) for k, v in good.items()}  # float16-exact values
    before = model.state_dict()
    state, exc = data.draw(corrupted_state_dict(good))
    if exc is None:
        model.load_state_dict(state)
        for k, v in good.items():
            np.testing.assert_array_equal(model.params[k], v)
        return
    message = assert_refused(lambda: model.load_state_dict(state), (exc,), ["state_dict"])
    assert "expected" in message and "got" in message
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v, err_msg="a refused load_state_dict changed a parameter")


# ---- 12. invalid network calls ----------------------------------------------------------------------
@st.composite
def bad_network_call(draw, case: NetworkCase, net: rnnkit.RNNNetwork, inputs, targets, state):
    """(args for forward_loss, expected exception, names)."""
    T, N, K = case.T, case.N, case.output_size
    lengths = case.lengths
    kind = draw(st.sampled_from(("input_dtype", "input_rank", "input_empty", "token_range", "input_size",
                                 "target_range", "target_shape", "target_dtype", "all_ignored", "state",
                                 "lengths")))
    if kind == "input_dtype":
        dtype = draw(st.sampled_from(("float32", "bool", "complex64", "object", "U2") if case.tokens
                                     else ("int64", "bool", "complex64", "object", "U2")))
        return (np.zeros(np.shape(inputs), dtype), targets, state, lengths), TypeError, ["inputs"]
    if kind == "input_rank":
        bad = np.zeros(np.shape(inputs) + (1,), np.asarray(inputs).dtype)
        return (bad, targets, state, lengths), ValueError, ["inputs"]
    if kind == "input_empty":
        shape = list(np.shape(inputs))
        shape[draw(st.integers(0, 1))] = 0
        return (np.zeros(shape, np.asarray(inputs).dtype), targets, None, None), ValueError, ["inputs"]
    if kind == "token_range" and case.tokens:
        bad = np.array(inputs)
        bad.reshape(-1)[draw(st.integers(0, bad.size - 1))] = draw(
            st.one_of(st.integers(case.vocab_size, 2**63 - 1), st.integers(-2**63, -1)))
        return (bad, targets, state, lengths), ValueError, ["inputs", "tokens"]
    if kind in ("token_range", "input_size") and not case.tokens:
        bad = np.zeros(np.shape(inputs)[:-1] + (case.input_size + 1,), case.dtype)
        return (bad, targets, state, lengths), ValueError, ["inputs"]
    if kind == "input_size":
        return (np.asarray(inputs)[..., None].astype(case.dtype), targets, state, lengths), TypeError, ["inputs"]
    if kind == "target_range" and case.loss == "cross_entropy":
        bad = np.array(targets)
        bad.reshape(-1)[0] = draw(st.one_of(st.integers(K, 2**62), st.integers(-2**62, -1).filter(
            lambda v: v != case.ignore_index)))
        return (inputs, bad, state, lengths), ValueError, ["targets"]
    if kind in ("target_range", "target_shape"):
        bad = np.array(targets)[..., None] if draw(st.booleans()) else np.array(targets).reshape(-1)[:-1]
        return (inputs, bad, state, lengths), ValueError, ["targets"]
    if kind == "target_dtype":
        dtype = "float64" if case.loss == "cross_entropy" else draw(st.sampled_from(("int64", "bool", "complex128")))
        return (inputs, np.zeros(np.shape(targets), dtype), state, lengths), TypeError, ["targets"]
    if kind == "all_ignored" and case.loss == "cross_entropy":
        return (inputs, np.full(np.shape(targets), case.ignore_index), state, lengths), ValueError, ["targets"]
    if kind in ("all_ignored", "state"):
        groups = net.rnn.num_layers * net.rnn.num_directions
        wrong = np.zeros((groups + 1, N, net.rnn.state_size), case.dtype)
        if net.has_cell_state:
            return (inputs, targets, wrong, lengths), TypeError, ["state"]
        return (inputs, targets, wrong, lengths), ValueError, ["state"]
    return (inputs, targets, state, [T + 1] * N), ValueError, ["lengths"]


@fuzz_settings("bad_network_call")
@given(case=network_cases(), data_seed=st.integers(0, 2**32 - 1), data=st.data())
def test_bad_network_calls_are_refused_naming_the_argument(case, data_seed, data):
    """RNNNetwork.forward_loss / evaluate with bad inputs (dtype, rank, empty, token ids out of
    range, feature size), targets (class ids out of range, shape, dtype, all ignored), state or
    lengths raise TypeError/ValueError naming the argument; nothing is cached or changed."""
    count_case("bad_network_call", "invalid")
    net = case.build()
    inputs, targets, state, _, _ = network_problem(case, net, data_seed)
    loss_before, _ = net.evaluate(inputs, targets, state, case.lengths)
    args, exc, names = data.draw(bad_network_call(case, net, inputs, targets, state))
    assert_refused(lambda: net.forward_loss(*args), (exc,), names)
    assert_refused(lambda: net.evaluate(*args), (exc,), names)
    # Nothing cached or changed by the refusals.
    with pytest.raises(RuntimeError, match="backward"):
        net.backward()
    assert net.evaluate(inputs, targets, state, case.lengths)[0] == loss_before


# ---- 13. corrupted and truncated checkpoints -------------------------------------------------------
@dataclass(frozen=True)
class SavedCheckpoint:
    path: str
    raw: bytes = field(repr=False)
    central_directory: int = field(repr=False)  # offset of the zip's central directory
    content: Any = field(repr=False)             # what load_checkpoint read from the intact file

    def same_content(self, loaded) -> bool:
        original = self.content
        if loaded.meta != original.meta:
            return False
        for group in ("params", "optimizer_buffers", "arrays"):
            a, b = getattr(loaded, group), getattr(original, group)
            if a.keys() != b.keys():
                return False
            for k in a:
                if not isinstance(a[k], np.ndarray) or a[k].dtype != b[k].dtype or a[k].shape != b[k].shape:
                    return False
                if not np.array_equal(a[k], b[k]):
                    return False
        return True


class SavedCheckpoints:
    """The fixture's value; a short repr keeps hypothesis' failure reports readable."""

    def __init__(self, items: Sequence[SavedCheckpoint]) -> None:
        self.items = tuple(items)

    def __getitem__(self, i: int) -> SavedCheckpoint:
        return self.items[i]

    def __repr__(self) -> str:
        return f"<{len(self.items)} saved checkpoints: {', '.join(c.path for c in self.items)}>"


@pytest.fixture(scope="module")
def saved_checkpoints(tmp_path_factory) -> SavedCheckpoints:
    """A few real checkpoints: networks with and without optimizer state and carried arrays."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = []
    for i, (cell, optimizer) in enumerate([("gru", "Adam"), ("lstm", "SGD"), ("ln_lstm", None)]):
        net = rnnkit.RNNNetwork(vocab_size=6, hidden_size=3, cell=cell, seed=i)
        opt = None if optimizer is None else getattr(rnnkit.optim, optimizer)(net, lr=0.1)
        path = folder / f"c{i}.npz"
        save_checkpoint(str(path), net, opt, step=i + 1, meta={"note": "fuzz"},
                        arrays={"carried": np.arange(6.0).reshape(2, 3)})
        raw = path.read_bytes()
        eocd = raw.rfind(b"PK\x05\x06")
        (cd_offset,) = struct.unpack("<I", raw[eocd + 16:eocd + 20])
        out.append(SavedCheckpoint(str(path), raw, cd_offset, load_checkpoint(str(path))))
    return SavedCheckpoints(out)


@fuzz_settings("corrupt_checkpoint")
@given(which=st.integers(0, 2), damage=st.sampled_from(("flip", "flip", "truncate", "zero_run", "append", "splice")),
       region=st.sampled_from(("anywhere", "local header", "central directory")),
       offset=st.integers(0, 2**20), mask=st.integers(1, 255), length=st.integers(1, 64))
def test_corrupted_checkpoints_are_refused_or_read_identically(saved_checkpoints, which, damage, region, offset,
                                                               mask, length):
    """checkpoint.py promises: a file that is not a complete rnnkit checkpoint raises ValueError
    saying why. So a damaged file either loads with exactly the saved content (the damage hit bytes
    nothing reads) or raises ValueError -- never another exception or different data."""
    count_case("corrupt_checkpoint", "invalid")
    saved = saved_checkpoints[which]
    raw = bytearray(saved.raw)
    base = {"anywhere": 0, "local header": 0, "central directory": saved.central_directory}[region]
    span = len(raw) - base if region != "local header" else 30
    pos = base + offset % span
    if damage == "flip":
        raw[pos] ^= mask
    elif damage == "truncate":
        del raw[pos:]
    elif damage == "zero_run":
        raw[pos:pos + length] = bytes(len(raw[pos:pos + length]))
    elif damage == "append":
        raw += bytes([mask]) * length
    else:  # splice: a run of bytes from elsewhere in the same file
        src = (pos * 7919 + mask) % len(raw)
        chunk = bytes(raw[src:src + length])
        raw[pos:pos + len(chunk)] = chunk
    assert_loads_identically_or_refused(saved, bytes(raw), f"{damage} at byte {pos}")


def assert_loads_identically_or_refused(saved: SavedCheckpoint, raw: bytes, what: str) -> None:
    path = Path(saved.path).with_name("damaged.npz")
    path.write_bytes(raw)
    try:
        loaded = load_checkpoint(str(path))
    except ValueError as exc:
        assert "checkpoint" in str(exc) and "cannot be loaded" in str(exc)
        return
    assert saved.same_content(loaded), f"a damaged checkpoint ({what}) loaded without error but with different content"


@pytest.mark.parametrize("field_offset, mask", [(6, 0x80), (8, 0x01), (8, 0xFF), (10, 0x01)],
                         ids=["version-needed", "encrypted-flag", "patched-data-flag", "compression-method"])
def test_damaged_zip_header_fields_are_value_errors(saved_checkpoints, field_offset, mask):
    """Regressions the fuzzing found: one damaged field of the first central-directory header
    (version needed, the "encrypted" or "patched data" flag, the compression method) makes zipfile
    raise NotImplementedError or RuntimeError, which load_checkpoint lets through instead of its
    documented ValueError."""
    count_case("corrupt_checkpoint", "invalid")
    saved = saved_checkpoints[0]
    raw = bytearray(saved.raw)
    raw[saved.central_directory + field_offset] ^= mask
    assert_loads_identically_or_refused(saved, bytes(raw), f"central directory byte {field_offset} ^ {mask:#x}")


def test_an_entry_emptied_in_the_central_directory_is_refused(saved_checkpoints, tmp_path):
    """Found by the fuzzing: zeroing an entry's CRC and sizes in the zip's central directory makes it
    read as an empty member (whose CRC-32 is 0, so nothing looks wrong); NumPy's npz reader returns a
    member without the .npy magic as raw bytes, and load_checkpoint handed back b'' as a parameter."""
    count_case("corrupt_checkpoint", "invalid")
    saved = saved_checkpoints[0]
    raw = bytearray(saved.raw)
    crc_and_sizes = saved.central_directory + 16  # CRC-32, compressed size, uncompressed size
    raw[crc_and_sizes:crc_and_sizes + 12] = bytes(12)
    path = tmp_path / "emptied.npz"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(str(path))


def test_a_duplicated_entry_name_is_not_silently_dropped(saved_checkpoints, tmp_path):
    """One flipped bit can turn an entry's name in the zip's central directory into another entry's
    name ("weight_ih" -> "weight_hh"); the archive then lists that name twice and the first entry
    vanishes. load_checkpoint must refuse such a file, not return a checkpoint missing a parameter."""
    count_case("corrupt_checkpoint", "invalid")
    saved = saved_checkpoints[0]
    name = b"params/rnn.weight_ih_l0.npy"
    at = saved.raw.index(name, saved.central_directory) + name.index(b"ih")
    raw = bytearray(saved.raw)
    raw[at] ^= ord("i") ^ ord("h")
    path = tmp_path / "duplicate.npz"
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as z:
        assert z.namelist().count("params/rnn.weight_hh_l0.npy") == 2  # the damage this test is about
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(str(path))


# ---- 14. impossible sizes ----------------------------------------------------------------------------
HUGE = st.one_of(st.integers(2**36, 2**62), st.sampled_from((2**40, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 1)))
LAYER_CLASSES = {"RNN": rnnkit.RNN, "LSTM": rnnkit.LSTM, "GRU": rnnkit.GRU, "LayerNormLSTM": rnnkit.LayerNormLSTM,
                 "LayerNormGRU": rnnkit.LayerNormGRU}


@needs_memory_guard
@needs_failing_allocations
# No shrinking: a failing size is already a minimal reproducer, and each attempt that allocates
# runs into the address-space cap first.
@settings(fuzz_settings("huge_constructor"), phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(cls=st.sampled_from(sorted(LAYER_CLASSES) + ["RNNNetwork"]), huge=HUGE, data=st.data())
def test_impossible_sizes_in_constructors_are_refused(cls, huge, data):
    """Sizes whose parameters could never fit (>= 2**36 elements) end in MemoryError saying how much,
    or ValueError -- before anything big is allocated (the call runs under an address-space cap)."""
    count_case("huge_constructor", "invalid")
    if cls == "RNNNetwork":
        arg = data.draw(st.sampled_from(("vocab_size", "embedding_dim", "input_size", "hidden_size", "output_size",
                                         "num_layers")))
        kw: Dict[str, Any] = dict(hidden_size=3, output_size=2, cell=data.draw(st.sampled_from(sorted(NETWORK_MODES))))
        if arg in ("vocab_size", "embedding_dim"):
            kw["vocab_size"] = 5
        else:
            kw["input_size"] = 4
        kw[arg] = huge
        build: Callable[[], Any] = lambda: rnnkit.RNNNetwork(**kw)  # noqa: E731
    else:
        arg = data.draw(st.sampled_from(("input_size", "hidden_size", "num_layers")))
        kw = dict(input_size=3, hidden_size=4, num_layers=1)
        kw[arg] = huge
        build = lambda: LAYER_CLASSES[cls](**kw)  # noqa: E731
    with pytest.raises((MemoryError, ValueError)) as info, address_space_guard():
        build()
    if isinstance(info.value, MemoryError):
        assert SIZE_IN_MESSAGE.search(str(info.value)), (
            f"{cls}({arg}={huge}): MemoryError without the size asked for: {str(info.value)!r}")


@needs_memory_guard
@needs_failing_allocations
@fuzz_settings("huge_broadcast_input")
@given(case=layer_cases(max_layers=2), log_bytes=st.integers(41, 56), share=st.floats(0.05, 0.95),
       source_dtype=st.sampled_from((np.float16, np.float32, np.float64)), network=st.booleans())
def test_zero_stride_views_of_huge_shapes_are_memory_errors(case, log_bytes, share, source_dtype, network):
    """A broadcast view costs nothing, but rnnkit needs it contiguous: a copy of 2**41+ bytes that
    must end in MemoryError naming the size (never an attempt that gets the process killed)."""
    count_case("huge_broadcast_input", "invalid")
    elements = 2**log_bytes // 8
    T = max(1, int(elements ** share))
    N = max(1, elements // T)
    if network:
        net = rnnkit.RNNNetwork(vocab_size=4, hidden_size=3, seed=0)
        tokens = np.broadcast_to(np.zeros((1, 1), np.int64), (T, N))
        call: Callable[[], Any] = lambda: net(tokens)  # noqa: E731
    else:
        layer, _ = case.build()
        shape = (elements, case.input_size) if case.unbatched else (T, N, case.input_size)
        x = np.broadcast_to(np.zeros((1,) * len(shape), source_dtype), shape)
        call = lambda: layer(x)  # noqa: E731
    with address_space_guard():
        assert_memory_error_names_size(call)


HUGE_OUTPUT_X_BYTES = 64 * 2**20  # at most this much real input per example
HUGE_OUTPUT_MAX_HIDDEN = 8192       # beyond this the layer's own weights get too big to build per example


@needs_memory_guard
@needs_failing_allocations
@fuzz_settings("huge_output")
@given(cell=st.sampled_from(("rnn_tanh", "rnn_relu", "gru")), factor=st.integers(2, 4), training=st.booleans(),
       bidirectional=st.booleans(), dtype=st.sampled_from((np.float32, np.float64)))
def test_calls_whose_outputs_cannot_fit_are_memory_errors_before_allocating(cell, factor, training, bidirectional,
                                                                            dtype):
    """A small input [rows, 1, 1] whose output y alone is `factor` x the machine's memory: rnnkit
    refuses it up front with MemoryError naming the byte count (README "Input rules")."""
    count_case("huge_output", "invalid")
    D = 2 if bidirectional else 1
    itemsize = np.dtype(dtype).itemsize
    H = max(1024, math.ceil(factor * physical_memory() / (D * HUGE_OUTPUT_X_BYTES)))
    if H > HUGE_OUTPUT_MAX_HIDDEN:
        pytest.skip(f"this machine's memory ({physical_memory()} bytes) needs hidden_size {H} for a small input")
    rows = factor * physical_memory() // (D * H * itemsize) + 1
    layer, _ = make(cell, 1, H, dtype=dtype, bias=False, bidirectional=bidirectional)
    layer.train(training)
    x = np.zeros((rows, 1, 1), dtype)
    with address_space_guard():
        with pytest.raises(MemoryError, match=r"rnnkit could not allocate \d+ bytes"):
            layer(x)
