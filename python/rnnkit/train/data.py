"""Data for training: the built-in text corpus, a character vocabulary, batch sources for truncated
BPTT over token streams and for sets of sequences, and the classic long-range-dependency tasks
(adding problem, copy memory) generated on the fly.

A *batch source* has ``next_batch() -> Batch`` and ``state_dict()`` / ``load_state_dict()`` (its
position and random state, so a checkpoint resumes exactly); an *evaluation source* has
``batches()``, a fixed sequence of batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from .. import _validate as V


@dataclass
class Batch:
    inputs: np.ndarray            # [T, N] token ids or [T, N, C] features (time-major)
    targets: np.ndarray           # class ids or values, shaped for the network's head
    lengths: Optional[np.ndarray] = None
    reset: bool = True            # start from a zero state (False: continue the previous chunk's)

    @property
    def tokens(self) -> int:
        """Target positions in the batch (for tokens-per-second)."""
        T, N = self.inputs.shape[:2]
        return int(self.lengths.sum()) if self.lengths is not None else T * N


# ---- text -------------------------------------------------------------------------------------
def default_corpus() -> str:
    """The documentation text that ships with every CPython (``pydoc_data.topics``), topics in
    sorted order: about half a megabyte of English prose and Python code, no download needed."""
    from pydoc_data import topics

    return "".join(topics.topics[key] for key in sorted(topics.topics))


class CharVocab:
    """Characters <-> ids, in sorted order of the characters seen."""

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars: List[str] = list(chars)
        if len(set(self.chars)) != len(self.chars) or any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise ValueError("chars: expected distinct single characters")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted({c for c in text if c not in self.index})
        if unknown:
            raise ValueError(f"text: expected only characters of the vocabulary, got unknown {unknown[:10]!r}")
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps(self.chars)

    @classmethod
    def from_json(cls, text: str) -> "CharVocab":
        chars = json.loads(text)
        if not isinstance(chars, list):
            raise ValueError("vocabulary: expected a JSON list of characters")
        return cls(chars)


def split_train_val(tokens: np.ndarray, val_fraction: float = 0.1):
    """The first (1 - val_fraction) of a stream for training, the rest for validation."""
    val_fraction = V.check_probability("val_fraction", val_fraction)
    cut = int(round(len(tokens) * (1.0 - val_fraction)))
    return tokens[:cut], tokens[cut:]


# ---- token streams (language modelling with truncated BPTT) ----------------------------------------
class TokenStream:
    """A token stream cut into ``batch_size`` parallel streams, served as consecutive chunks of
    ``seq_len`` steps: inputs ``x[t]`` predict targets ``x[t+1]``. The model's state carries from
    one chunk to the next (truncated BPTT); a batch with ``reset=True`` starts an epoch."""

    def __init__(self, tokens: Any, batch_size: int, seq_len: int) -> None:
        tokens = V.as_token_array("tokens", tokens).reshape(-1)
        self.batch_size = V.check_size("batch_size", batch_size)
        self.seq_len = V.check_size("seq_len", seq_len)
        per_stream = (len(tokens) - 1) // self.batch_size
        if per_stream < self.seq_len:
            raise ValueError(f"tokens: expected at least batch_size * seq_len + 1 = "
                             f"{self.batch_size * self.seq_len + 1} tokens, got {len(tokens)}")
        usable = per_stream * self.batch_size
        self.inputs = tokens[:usable].reshape(self.batch_size, per_stream).T.copy()        # [L, N]
        self.targets = tokens[1:usable + 1].reshape(self.batch_size, per_stream).T.copy()  # [L, N]
        self.chunks_per_epoch = per_stream // self.seq_len
        self.position = 0  # next chunk
        self.epoch = 0

    def next_batch(self) -> Batch:
        if self.position >= self.chunks_per_epoch:
            self.position = 0
            self.epoch += 1
        s = slice(self.position * self.seq_len, (self.position + 1) * self.seq_len)
        batch = Batch(self.inputs[s], self.targets[s], None, reset=self.position == 0)
        self.position += 1
        return batch

    def batches(self) -> Iterator[Batch]:
        """Every chunk once, in order (for evaluation; the state carries between them)."""
        for p in range(self.chunks_per_epoch):
            s = slice(p * self.seq_len, (p + 1) * self.seq_len)
            yield Batch(self.inputs[s], self.targets[s], None, reset=p == 0)

    def state_dict(self) -> Dict[str, Any]:
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


# ---- generated tasks ----------------------------------------------------------------------------
def adding_problem(T: int, n: int, rng: np.random.Generator):
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): inputs ``[T, n, 2]``,
    channel 0 uniform in [0, 1], channel 1 marks two positions (one in each half); the target
    ``[n, 1]`` is the sum of the two marked values. Always answering 1 gives MSE ~0.167."""
    values = rng.uniform(0.0, 1.0, (T, n))
    marks = np.zeros((T, n))
    half = max(T // 2, 1)
    first = rng.integers(0, half, n)
    second = rng.integers(half, T, n) if T > 1 else first
    marks[first, np.arange(n)] = 1.0
    marks[second, np.arange(n)] = 1.0
    inputs = np.stack([values, marks], axis=-1)
    targets = (values[first, np.arange(n)] + values[second, np.arange(n)])[:, None]
    return inputs, targets


ADDING_BASELINE_MSE = 1.0 / 6.0  # E[(sum - 1)^2] for two U(0,1) values


def copy_memory(T: int, n: int, rng: np.random.Generator, alphabet: int = 8, length: int = 10):
    """The copy-memory task (Arjovsky et al. 2016): ``length`` symbols from 1..alphabet, ``T``
    blanks (0) with a delimiter (alphabet + 1) at the last of them, then the model must output the
    symbols in order. Inputs and targets ``[T + 2*length, n]`` token ids; the memoryless baseline
    has cross-entropy ``length * log(alphabet) / (T + 2 * length)``."""
    total = T + 2 * length
    symbols = rng.integers(1, alphabet + 1, (length, n))
    inputs = np.zeros((total, n), np.int64)
    inputs[:length] = symbols
    inputs[length + T - 1] = alphabet + 1
    targets = np.zeros((total, n), np.int64)
    targets[-length:] = symbols
    return inputs, targets


def copy_memory_baseline(T: int, alphabet: int = 8, length: int = 10) -> float:
    return length * float(np.log(alphabet)) / (T + 2 * length)


class TaskStream:
    """Fresh batches of a generated task every step (``adding`` or ``copy``), seeded."""

    def __init__(self, task: str, T: int, batch_size: int, seed: Optional[int] = None) -> None:
        self.task = V.check_choice("task", task, ("adding", "copy"))
        self.T = V.check_size("T", T)
        self.batch_size = V.check_size("batch_size", batch_size)
        self.rng = np.random.default_rng(seed)

    def next_batch(self) -> Batch:
        if self.task == "adding":
            x, y = adding_problem(self.T, self.batch_size, self.rng)
        else:
            x, y = copy_memory(self.T, self.batch_size, self.rng)
        return Batch(x, y, None, reset=True)

    def fixed(self, batches: int, seed: int) -> "FixedBatches":
        """A fixed evaluation set from another seed."""
        other = TaskStream(self.task, self.T, self.batch_size, seed)
        return FixedBatches([other.next_batch() for _ in range(batches)])

    def state_dict(self) -> Dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class FixedBatches:
    """A fixed list of batches (an evaluation set)."""

    def __init__(self, batches: List[Batch]) -> None:
        self._batches = list(batches)

    def batches(self) -> Iterator[Batch]:
        return iter(self._batches)


class SequenceBatches:
    """Mini-batches drawn from a set of sequences, reshuffled each epoch.

    inputs: ``[T, S, ...]`` (S sequences, time-major); targets: ``[T, S, ...]`` for a network with
    ``head="sequence"``, ``[S, ...]`` for ``head="last"``; lengths: ``[S]`` or None."""

    def __init__(self, inputs: Any, targets: Any, batch_size: int, lengths: Any = None,
                 head: str = "sequence", shuffle: bool = True, seed: Optional[int] = None) -> None:
        self.inputs = np.asarray(inputs)
        self.targets = np.asarray(targets)
        self.lengths = None if lengths is None else np.asarray(lengths, np.int64)
        self.count = self.inputs.shape[1]
        self._target_axis = 1 if V.check_choice("head", head, ("sequence", "last")) == "sequence" else 0
        if self.targets.shape[self._target_axis] != self.count:
            raise ValueError(f"targets: expected {self.count} sequences along axis {self._target_axis}, "
                             f"got shape {V.shape_str(self.targets.shape)}")
        self.batch_size = V.check_size("batch_size", batch_size)
        self.shuffle = V.check_bool("shuffle", shuffle)
        self.rng = np.random.default_rng(seed)
        self.order = self._new_order()
        self.position = 0
        self.epoch = 0

    def _new_order(self) -> np.ndarray:
        return self.rng.permutation(self.count) if self.shuffle else np.arange(self.count)

    def _take(self, idx: np.ndarray) -> Batch:
        targets = np.take(self.targets, idx, axis=self._target_axis)
        lengths = None if self.lengths is None else self.lengths[idx]
        return Batch(np.take(self.inputs, idx, axis=1), targets, lengths, reset=True)

    def next_batch(self) -> Batch:
        if self.position + self.batch_size > self.count:
            self.order = self._new_order()
            self.position = 0
            self.epoch += 1
        idx = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return self._take(idx)

    def batches(self) -> Iterator[Batch]:
        for start in range(0, self.count, self.batch_size):
            yield self._take(np.arange(start, min(start + self.batch_size, self.count)))

    def state_dict(self) -> Dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(),
                "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = np.asarray(state["order"], np.int64)
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
