# Type stubs of the compiled module rnnkit._core (its public names), generated from the built
# module with `pybind11-stubgen rnnkit._core -o <dir>`; tests/test_package.py checks they match it.
"""
rnnkit's compiled core: recurrent layer forward and BPTT on the CPU (and CUDA when built).
"""
from __future__ import annotations
import numpy
import numpy.typing
import typing
__all__: list[str] = ['Cache', 'activations', 'DeviceArray', 'NetworkCache', 'NetworkConfig', 'OutOfMemoryError', 'StackConfig', 'adam_step', 'backward', 'backward_reserve', 'blas_num_threads', 'build_info', 'cached_bytes', 'clamp_arrays', 'cuda_clear_graph_cache', 'cuda_current_stream', 'cuda_empty_cache', 'cuda_get_graphs', 'cuda_get_persistent', 'cuda_graph_stats', 'cuda_memory_stats', 'cuda_network_backward', 'cuda_network_forward', 'cuda_network_generate', 'cuda_persistent_launches', 'cuda_selftest_axpy', 'cuda_set_graphs', 'cuda_set_persistent', 'cuda_set_stream', 'cuda_status', 'empty_cache', 'forward', 'from_cuda_array_interface', 'from_dlpack', 'get_deterministic', 'get_num_threads', 'network_backward', 'network_forward', 'network_generate', 'reserve_size', 'rmsprop_step', 'scale_arrays', 'set_deterministic', 'set_num_threads', 'sgd_step', 'step', 'sum_of_squares', 'to_device']
class OutOfMemoryError(MemoryError):
    pass
def activations() -> list:
    """
    ONNX's activation functions the general cells run: [(name, parameters taken (0, 1: alpha, 2: alpha and beta), default alpha, default beta)], the defaults ONNX Runtime applies.
    """
class StackConfig:
    """
    Configuration of a layer stack (see stack.h).
    """
    def __init__(self, mode: str, input_size: typing.SupportsInt | typing.SupportsIndex, hidden_size: typing.SupportsInt | typing.SupportsIndex, num_layers: typing.SupportsInt | typing.SupportsIndex = 1, bidirectional: bool = False, proj_size: typing.SupportsInt | typing.SupportsIndex = 0, bias: bool = True, dropout: typing.SupportsFloat | typing.SupportsIndex = 0.0, precision: str = 'float32', reverse: bool = False, cell_options: str = '', weight_dropout: typing.SupportsFloat | typing.SupportsIndex = 0.0, zoneout: typing.SupportsFloat | typing.SupportsIndex = 0.0, zoneout_cell: typing.SupportsFloat | typing.SupportsIndex = 0.0, input_dropout: typing.SupportsFloat | typing.SupportsIndex = 0.0, recurrent_dropout: typing.SupportsFloat | typing.SupportsIndex = 0.0, zoneout_expected: bool = False) -> None:
        ...
    def param_specs(self) -> list:
        """
        [(name, shape)] of every parameter, in PyTorch's state_dict order.
        """
    @property
    def bias(self) -> bool:
        ...
    @property
    def cell_options(self) -> str:
        """
        ONNX's options in their canonical string form ('' for the cell's defaults).
        """
    @property
    def general(self) -> bool:
        ...
    @property
    def dropout(self) -> float:
        ...
    @property
    def precision(self) -> str:
        ...
    @property
    def gates(self) -> int:
        ...
    @property
    def has_cell_state(self) -> bool:
        ...
    @property
    def hidden_size(self) -> int:
        ...
    @property
    def input_size(self) -> int:
        ...
    @property
    def mode(self) -> str:
        ...
    @property
    def num_directions(self) -> int:
        ...
    @property
    def num_layers(self) -> int:
        ...
    @property
    def proj_size(self) -> int:
        ...
    @property
    def weight_dropout(self) -> float:
        ...
    @property
    def zoneout(self) -> float:
        ...
    @property
    def zoneout_cell(self) -> float:
        ...
    @property
    def input_dropout(self) -> float:
        ...
    @property
    def recurrent_dropout(self) -> float:
        ...
    @property
    def zoneout_expected(self) -> bool:
        ...
class DeviceArray:
    """
    An array in CUDA device memory (host memory in the emulation build): shape, dtype, numpy() copies it to the host.
    (CUDA and emulation builds only.)
    """
    @property
    def shape(self) -> tuple: ...
    @property
    def dtype(self) -> numpy.dtype: ...
    @property
    def ndim(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def device(self) -> str: ...
    def numpy(self) -> numpy.ndarray:
        """
        A host copy (numpy.ndarray).
        """
    @property
    def __cuda_array_interface__(self) -> dict:
        """
        The CUDA array interface (v3): CuPy, Numba and PyTorch read the array without a copy.
        """
    def __dlpack__(self, *, stream: typing.Any = None, max_version: typing.Any = None, dl_device: typing.Any = None,
                   copy: typing.Any = None) -> typing.Any:
        """
        A DLPack capsule over this array's memory (no copy); the array stays alive while the consumer holds it.
        """
    def __dlpack_device__(self) -> tuple:
        """
        (device type, id) in DLPack's terms: (2, 0), CUDA device 0 (the emulation: (1, 0), the host).
        """
    def copy(self) -> DeviceArray:
        """
        A device copy.
        """
class Cache:
    """
    What a training forward keeps for backward (opaque).
    """
    @property
    def dtype(self) -> str:
        ...
    @property
    def nbytes(self) -> int:
        """
        Bytes held by this cache.
        """
    @property
    def shape(self) -> tuple[int, int]:
        """
        (T, N) of the forward that made it.
        """
    def reserve(self) -> numpy.ndarray | DeviceArray:
        """
        The cache as one flat array (reserve_size elements, no copy; keeps the cache alive), for
        backward_reserve. Zeroed padding only when the forward was asked for zero_cache.
        """
class NetworkConfig:
    """
    Configuration of a recurrent network (see network.h).
    """
    def __init__(self, stack: StackConfig, vocab_size: typing.SupportsInt | typing.SupportsIndex, output_size: typing.SupportsInt | typing.SupportsIndex, head: str = 'sequence', loss: str = 'cross_entropy', ignore_index: typing.SupportsInt | typing.SupportsIndex = -100) -> None:
        ...
    def param_specs(self) -> list:
        ...
    @property
    def feature_size(self) -> int:
        ...
    @property
    def ignore_index(self) -> int:
        ...
    @property
    def output_size(self) -> int:
        ...
    @property
    def stack(self) -> StackConfig:
        ...
    @property
    def vocab_size(self) -> int:
        ...
class NetworkCache:
    """
    What a training forward of a network keeps (opaque).
    """
    @property
    def has_loss_grad(self) -> bool:
        ...
    @property
    def nbytes(self) -> int:
        ...
    @property
    def shape(self) -> tuple[int, int]:
        ...
def _dropout_mask(seed: typing.SupportsInt | typing.SupportsIndex, layer: typing.SupportsInt | typing.SupportsIndex, count: typing.SupportsInt | typing.SupportsIndex, p: typing.SupportsFloat | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float64]:
    """
    The dropout multipliers forward applies to layer `layer`'s flattened output (for tests).
    """
def _packed_gemm(A: numpy.ndarray, B: numpy.ndarray, transposed: bool, beta: typing.SupportsFloat | typing.SupportsIndex, C: numpy.ndarray, cb: typing.SupportsInt | typing.SupportsIndex, ce: typing.SupportsInt | typing.SupportsIndex) -> None:
    ...
def _packed_panel_width(arg0: str) -> int:
    ...
def _packed_vs_blas(arg0: typing.SupportsInt | typing.SupportsIndex, arg1: typing.SupportsInt | typing.SupportsIndex, arg2: typing.SupportsInt | typing.SupportsIndex, arg3: typing.SupportsInt | typing.SupportsIndex) -> tuple[float, float]:
    ...
def _set_min_parallel_step_work(work: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    From how much per-step work (multiply-adds) a call uses the thread team (tests lower it).
    """
def _gemm_bf16(A: numpy.typing.ArrayLike, trans_a: bool, B: numpy.typing.ArrayLike, trans_b: bool, beta: typing.SupportsFloat | typing.SupportsIndex, C: numpy.typing.NDArray[numpy.float32]) -> None:
    """
    C = op(A) op(B) + beta C through precision='bfloat16''s GEMM (for tests).
    """
def _row_gemm(A: numpy.ndarray, W: numpy.ndarray, beta: float, C: numpy.ndarray, j0: int, j1: int, descending: bool, A2: numpy.ndarray | None = None, W2: numpy.ndarray | None = None) -> None:
    """
    C[:, j0:j1] = beta C + A W^T (+ A2 W2^T as one sum) through the row kernel, float32 (tests).
    """
def _row_gemm_kernels() -> list[str]:
    """
    The row kernels this CPU runs, the default first.
    """
def _set_row_gemm_kernel(name: str) -> None:
    """
    Which row kernel runs ('auto': the default); for tests.
    """
def _set_bf16_kernel(name: str) -> None:
    """
    Selects the bfloat16 GEMM kernel: 'auto' or one of _bf16_kernels() (tests, benchmarks).
    """
def _bf16_gemm_seconds(m: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, k: typing.SupportsInt | typing.SupportsIndex, reps: typing.SupportsInt | typing.SupportsIndex) -> tuple[float, float, float]:
    """
    (convert A, pack B, kernel) seconds per call of a bf16 GEMM [m,k] x [k,n] (benchmarks).
    """
def _bf16_kernels() -> list[str]:
    """
    The bfloat16 GEMM kernels this CPU runs, best (the default) first.
    """
def _bf16_dot_peak_gflops(seconds: typing.SupportsFloat | typing.SupportsIndex) -> tuple:
    """
    The core's AVX512_BF16 dot-product peak: (GFLOP/s, ISA), (0.0, '') without it (bench/goals.py).
    """
def _fma_peak_gflops(seconds: typing.SupportsFloat | typing.SupportsIndex) -> tuple:
    """
    The core's fp32 FMA peak: (GFLOP/s, ISA probed), (0.0, '') without AVX2/AVX-512 (bench/goals.py).
    """
def _sgemm_gflops(n: typing.SupportsInt | typing.SupportsIndex, reps: typing.SupportsInt | typing.SupportsIndex) -> float:
    ...
def adam_step(params: list, grads: list, exp_avg: list, exp_avg_sq: list, lr: typing.SupportsFloat | typing.SupportsIndex, beta1: typing.SupportsFloat | typing.SupportsIndex, beta2: typing.SupportsFloat | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, weight_decay: typing.SupportsFloat | typing.SupportsIndex, decoupled: bool, step: typing.SupportsInt | typing.SupportsIndex) -> None:
    ...
def reserve_size(config: StackConfig, T: typing.SupportsInt, N: typing.SupportsInt, dtype: numpy.dtype) -> int:
    """
    Elements of a training forward's cache block (Cache.reserve()) for x [T,N,C] of this dtype.
    """
def backward_reserve(config: StackConfig, reserve: numpy.ndarray | DeviceArray, T: typing.SupportsInt, N: typing.SupportsInt, lengths: numpy.ndarray | None, dropout_seed: typing.SupportsInt, dy: numpy.ndarray | DeviceArray | None, dh_n: numpy.ndarray | DeviceArray | None, dc_n: numpy.ndarray | DeviceArray | None, grads: list, need_dx: bool) -> tuple:
    """
    backward, from a reserve (Cache.reserve(), or a copy of it) instead of the Cache; the same call's
    config, T, N, lengths and dropout_seed must be given. The reserve is read, not modified.
    """
def backward(cache: Cache, dy: numpy.ndarray | DeviceArray | None, dh_n: numpy.ndarray | DeviceArray | None, dc_n: numpy.ndarray | DeviceArray | None, grads: list, need_dx: bool) -> tuple:
    """
    BPTT through the forward that produced `cache`.
    
    dy, dh_n, dc_n: gradients of the outputs or None. grads: arrays shaped like params, ACCUMULATED
    into. Returns (dx or None, dh0, dc0 or None). The GIL is released while it runs.
    """
def blas_num_threads() -> int:
    """
    Threads of rnnkit's OpenBLAS (always 1).
    """
def build_info() -> dict:
    """
    Compiler, Eigen, SIMD, BLAS and CUDA build details.
    """
def cached_bytes() -> int:
    """
    Bytes of large buffers kept for reuse.
    """
def clamp_arrays(arrays: list, limit: typing.SupportsFloat | typing.SupportsIndex) -> None:
    ...
def cuda_clear_graph_cache() -> None:
    """
    Drops this thread's cached CUDA graphs.
    """
def cuda_current_stream() -> int:
    """
    The cudaStream_t this thread's CUDA backend calls run on.
    """
def cuda_empty_cache() -> None:
    """
    Returns the CUDA backend's cached device memory to the device.
    """
def cuda_get_persistent() -> int:
    """
    The persistent forward's mode (0 auto, 1 always, 2 never).
    """
def cuda_get_graphs() -> bool:
    """
    Whether CUDA graphs are on.
    """
def cuda_graph_stats() -> dict:
    """
    CUDA graph counters: launches, captures, updates, instantiations (process-wide); cached (this thread's); per_topology (graphs of one shape kept before updates replace them).
    """
def cuda_memory_stats() -> dict:
    """
    The CUDA backend's caching allocator: cached_bytes, in_use_bytes, device_allocations, reuses.
    """
def cuda_network_backward(cache: NetworkCache, grads: list, d_outputs: typing.Any, need_dx: bool = False) -> tuple:
    """
    network_backward on the CUDA backend; gradients (CUDA arrays) ACCUMULATED. (dx|None, dh0, dc0|None).
    """
def cuda_network_forward(config: NetworkConfig, params: list, inputs: typing.Any, h0: typing.Any, c0: typing.Any, lengths: typing.Any, targets: typing.Any, training: bool, dropout_seed: typing.SupportsInt | typing.SupportsIndex, want_outputs: bool, softmax_outputs: bool) -> tuple:
    """
    network_forward on the CUDA backend: parameters, dense inputs, states and MSE targets are CUDA arrays; token ids, class-id targets and lengths host arrays. (outputs|None, h_n, c_n|None, loss|None, cache|None).
    """
def cuda_network_generate(config: NetworkConfig, params: list, prefix: typing.Any, count: typing.SupportsInt | typing.SupportsIndex, temperature: typing.SupportsFloat | typing.SupportsIndex, top_k: typing.SupportsInt | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, h0: typing.Any, c0: typing.Any) -> tuple:
    """
    network_generate on the CUDA backend (parameters and states CUDA arrays; prefix and the tokens host arrays): (tokens, h, c|None).
    """
def cuda_persistent_launches() -> int:
    """
    How many layer-direction forwards took the persistent kernel so far in this process.
    """
def cuda_selftest_axpy(a: float, x: list, y: list) -> list:
    """
    a*x + y computed by a CUDA kernel (a self-test of the CUDA build; CUDA and emulation builds only).
    """
def cuda_set_stream(stream: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    The cudaStream_t this thread's CUDA backend calls run on (0: the legacy default stream).
    """
def cuda_status() -> tuple:
    """
    (available, reason): whether the CUDA backend can run here, and why not.
    """
def empty_cache() -> None:
    """
    Returns the large buffers rnnkit keeps for reuse to the system.
    """
def forward(config: StackConfig, params: list, x: numpy.ndarray | DeviceArray, h0: numpy.ndarray | DeviceArray | None, c0: numpy.ndarray | DeviceArray | None, lengths: numpy.ndarray | None, training: bool, dropout_seed: typing.SupportsInt | typing.SupportsIndex, zero_cache: bool = False) -> tuple:
    """
    A stack of recurrent layers over a time-major sequence.
    
    params: the arrays of config.param_specs(), in that order. x [T,N,C]; h0 [L*D,N,P] or None;
    c0 [L*D,N,H] or None (LSTM cells); lengths int64 [N] or None. All C-contiguous, x's dtype
    (float32 or float64). Returns (y [T,N,D*P], h_n, c_n or None, cache or None). The GIL is
    released while it runs.
    """
def from_cuda_array_interface(obj: typing.Any) -> DeviceArray:
    """
    A DeviceArray over obj's device memory (its __cuda_array_interface__), no copy; keeps obj alive.
    """
def from_dlpack(obj: typing.Any) -> DeviceArray:
    """
    A DeviceArray over obj's device memory (its __dlpack__), no copy; keeps the memory alive.
    """
def get_deterministic() -> bool:
    ...
def get_num_threads() -> int:
    ...
def network_backward(cache: NetworkCache, grads: list, d_outputs: numpy.ndarray | None, need_dx: bool = False) -> tuple:
    """
    Network backward; gradients ACCUMULATED into grads. Returns (dx|None, dh0, dc0|None); dx (the gradient of a dense input, need_dx=True) is [T,N,C].
    """
def network_forward(config: NetworkConfig, params: list, inputs: numpy.ndarray, h0: numpy.ndarray | None, c0: numpy.ndarray | None, lengths: numpy.ndarray | None, targets: numpy.ndarray | None, training: bool, dropout_seed: typing.SupportsInt | typing.SupportsIndex, want_outputs: bool, softmax_outputs: bool) -> tuple:
    """
    Network forward (and loss with targets): (outputs|None, h_n, c_n|None, loss|None, cache|None).
    """
def network_generate(config: NetworkConfig, params: list, prefix: numpy.ndarray, count: typing.SupportsInt | typing.SupportsIndex, temperature: typing.SupportsFloat | typing.SupportsIndex, top_k: typing.SupportsInt | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, h0: numpy.ndarray | None, c0: numpy.ndarray | None) -> tuple:
    """
    Feeds prefix then samples count tokens: (tokens, h_n, c_n|None).
    """
def rmsprop_step(params: list, grads: list, square_avg: list, momentum_buffer: typing.Any, grad_avg: typing.Any, lr: typing.SupportsFloat | typing.SupportsIndex, alpha: typing.SupportsFloat | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, weight_decay: typing.SupportsFloat | typing.SupportsIndex, momentum: typing.SupportsFloat | typing.SupportsIndex, centered: bool) -> None:
    ...
def scale_arrays(arrays: list, factor: typing.SupportsFloat | typing.SupportsIndex) -> None:
    ...
def set_deterministic(on: bool) -> None:
    """
    Results identical for every thread count (process-wide; default off).
    """
def set_num_threads(n: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Threads rnnkit's loops may use (process-wide; default 1).
    """
def sgd_step(params: list, grads: list, momentum_buffers: typing.Any, lr: typing.SupportsFloat | typing.SupportsIndex, momentum: typing.SupportsFloat | typing.SupportsIndex, dampening: typing.SupportsFloat | typing.SupportsIndex, weight_decay: typing.SupportsFloat | typing.SupportsIndex, nesterov: bool, first_step: bool) -> None:
    ...
def step(config: StackConfig, params: list, x: numpy.ndarray | DeviceArray, h: numpy.ndarray | DeviceArray, c: numpy.ndarray | DeviceArray | None) -> tuple:
    """
    One timestep of a unidirectional stack: x [N,C], h [L,N,P], c [L,N,H] or None -> (y [N,P], h, c|None).
    """
class StepSnapshot:
    """
    A layer's weights packed once in bfloat16 for streaming steps (opaque; see pack_step).
    """
    @property
    def config(self) -> StackConfig:
        ...
    @property
    def nbytes(self) -> int:
        """
        Bytes of the packed matrices (the copies not counted).
        """
    @property
    def params(self) -> tuple:
        """
        The copies of the parameters it was packed from.
        """
class NetworkStepSnapshot:
    """
    A network's weights packed once in bfloat16 for streaming steps (opaque).
    """
    @property
    def config(self) -> NetworkConfig:
        ...
    @property
    def params(self) -> tuple:
        """
        The copies of the parameters it was packed from.
        """
def pack_step(config: StackConfig, params: list) -> StepSnapshot:
    """
    A snapshot of a unidirectional float32 layer stack at precision 'bfloat16' for step_packed.
    """
def step_packed(snapshot: StepSnapshot, x: numpy.ndarray, h: numpy.ndarray, c: numpy.ndarray | None) -> tuple:
    """
    step() from a snapshot (pack_step): x [N,C], h [L,N,P], c [L,N,H] or None -> (y [N,P], h, c|None).
    """
def pack_network_step(config: NetworkConfig, params: list) -> NetworkStepSnapshot:
    """
    A snapshot of a sequence-head network over a unidirectional float32 stack at precision 'bfloat16'.
    """
def network_step(config: NetworkConfig, params: list, inputs: numpy.ndarray, h0: numpy.ndarray | None, c0: numpy.ndarray | None, softmax_outputs: bool) -> tuple:
    """
    One step of a sequence-head network on the CPU (the stack in float32 whatever the precision): inputs [1,N] ids or [1,N,C] -> (outputs [N,K], h_n, c_n|None).
    """
def network_step_packed(snapshot: NetworkStepSnapshot, inputs: numpy.ndarray, h0: numpy.ndarray | None, c0: numpy.ndarray | None, softmax_outputs: bool) -> tuple:
    """
    One step from a snapshot: inputs [1,N] ids or [1,N,C] float32 -> (outputs [N,K], h_n, c_n|None).
    """
def sum_of_squares(arrays: list) -> float:
    """
    sum of squares of every element of every array (in double).
    """
def cuda_set_graphs(enabled: bool) -> None:
    """
    CUDA graphs for the standard path's per-step launches, process-wide.
    """
def cuda_set_persistent(mode: int) -> None:
    """
    The persistent small-batch forward: 0 auto, 1 always (wherever it can run), 2 never.
    """
def to_device(array: numpy.ndarray) -> DeviceArray:
    """
    A copy of a numpy array (float32, float64 or int64) in CUDA device memory (CUDA and emulation builds only).
    """
__version__: str = '0.1.0'
