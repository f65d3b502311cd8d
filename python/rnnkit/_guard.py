"""Thread-safety rule for one model: training from one thread at a time; inference from any.

A layer or network keeps what its last training forward cached for backward, and backward
accumulates into the model's gradients. Two threads training the *same* model at once would
overwrite each other's caches and gradients without any error, so that is refused with
``RuntimeError``:

- a training forward or a backward while another thread is inside one on the same model;
- a training forward while another thread's forward on the model, from a thread that is still
  running, waits for its backward (forward in one thread and backward in another is fine when
  they take turns).

Inference (an eval-mode forward, ``step``, ``predict_proba``, ``evaluate``) only reads the
parameters and is safe from any number of threads at once; different models in different
threads never interact. The compiled core releases the GIL, so those calls do run in parallel.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class TrainingGuard:
    """Per model: the lock held during a training call, and the thread whose forward awaits its
    backward."""

    __slots__ = ("_lock", "_owner")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: Optional[threading.Thread] = None

    # Copies of a model (copy.deepcopy, pickle) start with a guard of their own.
    def __deepcopy__(self, memo) -> "TrainingGuard":
        return TrainingGuard()

    def __reduce__(self):
        return (TrainingGuard, ())

    @contextmanager
    def training_call(self, what: str, *, forward: bool) -> Iterator[None]:
        """Wraps one training forward (``forward=True``) or backward of the model."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                f"{what}: expected one thread at a time training this model, got a call while another "
                "thread is inside its forward/backward (give each thread its own model; inference "
                "calls may share one)"
            )
        try:
            if forward:
                owner = self._owner
                if owner is not None and owner is not threading.current_thread() and owner.is_alive():
                    raise RuntimeError(
                        f"{what}: expected this model's pending training forward (from thread "
                        f"{owner.name!r}) to be backpropagated first, got a training forward from thread "
                        f"{threading.current_thread().name!r} (give each thread its own model)"
                    )
            yield
        finally:
            self._lock.release()

    def set_pending(self, pending: bool) -> None:
        """Records that the calling thread's forward awaits its backward (or that none does)."""
        self._owner = threading.current_thread() if pending else None
