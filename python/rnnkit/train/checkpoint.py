"""Checkpoints: model, optimizer, random states, step and configuration in one file.

The file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays) with no pickled objects: loading
uses ``allow_pickle=False`` and never executes code. Entries:

- ``meta.json``: UTF-8 JSON as a uint8 array: format name and version, rnnkit version, the model's
  config, the optimizer's class and hyper-parameters, the step, random-generator states and the
  trainer's position;
- ``params/<name>``: every model parameter;
- ``optim/<buffer>/<name>``: the optimizer's state buffers;
- ``arrays/<name>``: other arrays (the carried recurrent state of truncated BPTT).

Writes are atomic: the archive goes to a temporary file in the same folder, is flushed and
fsync'ed, then renamed over the target (and the folder fsync'ed), so an interrupted save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Optional

import numpy as np

FORMAT = "rnnkit-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    meta: Dict[str, Any]
    params: Dict[str, np.ndarray]
    optimizer_buffers: Dict[str, np.ndarray] = field(default_factory=dict)
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def _json_default(value: Any):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Writes a file atomically: ``write(f)`` fills a temporary file next to it, which is flushed,
    fsync'ed and renamed over ``path``, then the folder is fsync'ed. An interrupted write leaves the
    previous file whole (and at worst a temporary that the next write to ``path`` removes)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A fresh name next to the target (same file system, so the rename is atomic); mode 0o666
    # minus the umask like any new file (mkstemp would make it private).
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    _remove_stale_temporaries(folder, os.path.basename(path))


def atomic_write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Writes an uncompressed .npz atomically (see atomic_write)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _remove_stale_temporaries(folder: str, name: str) -> None:
    """Deletes temporaries of earlier writes to `name` whose writer process is gone (killed mid-save)."""
    prefix = f".{name}."
    for entry in os.listdir(folder):
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid_text = entry[len(prefix):].split(".", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # that writer is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        try:
            os.unlink(os.path.join(folder, entry))
        except FileNotFoundError:
            pass


def save_checkpoint(path: str, model: Any, optimizer: Any = None, step: int = 0,
                    meta: Optional[Dict[str, Any]] = None, arrays: Optional[Dict[str, np.ndarray]] = None) -> None:
    """Saves ``model`` (an RNNNetwork), ``optimizer`` and extra JSON ``meta`` / ``arrays``."""
    from .. import __version__

    info: Dict[str, Any] = dict(meta or {})
    info.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rnnkit_version": __version__,
        "step": int(step),
        "model": {"class": type(model).__name__, "config": model.config()},
        "dropout_rng": model.dropout_rng.bit_generator.state,
    })
    out: Dict[str, np.ndarray] = {f"params/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        state = optimizer.state_dict()
        info["optimizer"] = {"class": type(optimizer).__name__, "hyper": state["hyper"], "step": state["step"]}
        out.update({f"optim/{k}": v for k, v in state["buffers"].items()})
    for k, v in (arrays or {}).items():
        out[f"arrays/{k}"] = np.asarray(v)
    out["meta.json"] = np.frombuffer(json.dumps(info, default=_json_default).encode("utf-8"), dtype=np.uint8)
    atomic_write_npz(path, out)


def load_checkpoint(path: str) -> Checkpoint:
    """Reads a checkpoint without executing anything from it; a file that is not a complete
    rnnkit checkpoint raises ValueError saying why."""
    path = os.fspath(path)
    try:
        # Our own handle: np.load leaks its file when the zip cannot be parsed.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            members = archive.zip.namelist()
            if len(set(members)) != len(members):
                # A damaged name can repeat another; zipfile would silently keep only the last one.
                raise ValueError(f"duplicate entry {next(m for m in members if members.count(m) > 1)!r}")
            names = list(archive.files)
            if "meta.json" not in names:
                raise ValueError("no meta.json entry")
            raw = archive["meta.json"]
            if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 1:
                raise ValueError("meta.json is not a byte array")
            meta = json.loads(raw.tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"not an {FORMAT} file")
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
            groups: Dict[str, Dict[str, np.ndarray]] = {"params": {}, "optim": {}, "arrays": {}}
            for name in names:
                prefix, _, rest = name.partition("/")
                if prefix in groups and rest:
                    value = archive[name]
                    if not isinstance(value, np.ndarray):  # NumPy hands back a member without .npy magic as bytes
                        raise ValueError(f"entry {name!r} is not an array")
                    groups[prefix][rest] = value
                elif name != "meta.json":
                    raise ValueError(f"unexpected entry {name!r}")
    except FileNotFoundError:
        raise
    # zipfile reports some damaged header fields as NotImplementedError (version, compression,
    # patched-data flag) or RuntimeError (the encryption flag); zlib.error for damaged deflate data.
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, UnicodeDecodeError, NotImplementedError,
            RuntimeError, zlib.error) as exc:
        reason = str(exc)
        if "allow_pickle" in reason:  # NumPy's wording suggests unsafe loading: say what the file holds instead
            reason = "not a NumPy .npz archive; NumPy could read it only as a pickle, which is never loaded"
        raise ValueError(f"checkpoint {path!r}: cannot be loaded: {reason}") from None
    return Checkpoint(meta, groups["params"], groups["optim"], groups["arrays"])


def model_from_checkpoint(ckpt: Checkpoint):
    """Rebuilds the RNNNetwork a checkpoint holds and loads its parameters and dropout state."""
    from ..network import RNNNetwork

    model_info = ckpt.meta.get("model", {})
    if model_info.get("class") != "RNNNetwork" or not isinstance(model_info.get("config"), dict):
        raise ValueError("checkpoint: expected an RNNNetwork model entry")
    try:
        model = RNNNetwork(**model_info["config"])
    except TypeError as exc:
        raise ValueError(f"checkpoint: model config is not valid: {exc}") from None
    model.load_state_dict(ckpt.params)
    if "dropout_rng" in ckpt.meta:
        model.dropout_rng.bit_generator.state = ckpt.meta["dropout_rng"]
    return model
