"""Checkpoints and result files: clear errors, atomic writes, nothing silently overwritten."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

try:
    import fcntl
except ImportError:  # Windows: appends are then unlocked
    fcntl = None

import torch

from ..errors import IFMError, IFMWarning
from ..layout import standard_layout

Tensor = torch.Tensor
WRAPPER_KEYS = ("state_dict", "net", "model")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_creatable(folder: Path, what: str, path: Path) -> None:
    """``folder`` exists as a writable folder, or can be made: its nearest existing ancestor is a folder in which a
    folder can be made (tried and removed again: permission bits alone say yes to root, also on read-only mounts
    and under /proc). Nothing is left behind (a run that fails later on its inputs leaves no empty folder)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise IFMError(f"cannot create {what} {path}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise IFMError(f"{what} {path} is not writable ({existing} is read-only); choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ifm-probe-", dir=existing))
    except OSError as exc:
        raise IFMError(f"{what} {path} cannot be written ({existing}: {exc.strerror or exc}); choose another path") \
            from None


def writable_location(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder exists or can be made, no folder
    in its place); return it. Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise IFMError(f"{what} {path} is a folder; give a file path")
    _check_creatable(path.parent, what, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise IFMError(f"{what} {path} is not writable; choose another path")
    return path


def writable_folder(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work, that the folder ``path`` exists writable or can be made; return it. Nothing is
    created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IFMError(f"{what} {path} is a file; give a folder")
    _check_creatable(path, what, path)
    return path


def finite_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the file into place, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_state_dict_file(path: str | os.PathLike | None) -> dict[str, Tensor]:
    """Read a checkpoint: a plain state dict, or one wrapped in ``state_dict``/``net``/``model``,
    with or without a ``module.`` prefix (DataParallel)."""
    if path is None:
        raise IFMError("no checkpoint given: pass --model_param PATH")
    path = Path(path)
    if path.is_dir():
        raise IFMError(f"checkpoint {path} is a folder; pass --model_param the state dict file inside it")
    if not path.is_file():
        raise IFMError(f"checkpoint not found: {path} (pass --model_param pointing at a saved state dict)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the pickle-protocol warning of a file that is no checkpoint)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or pickled objects
        raise IFMError(f"cannot read checkpoint {path}: {_unreadable_reason(path, exc)}") from None
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise IFMError(f"{path} holds no state dict (a dict of tensors, possibly under 'state_dict', 'net' or 'model')")
    # (in the standard layout: a checkpoint saved from a channels-last model holds channels-last tensors)
    return standard_layout({(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()})


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, in a few words (PyTorch's text is a page)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    text = str(exc)
    if "Unsupported global" in text:
        return ("it holds pickled Python objects, e.g. a whole model or a NumPy array: save model.state_dict() "
                "with torch.save")
    if "Weights only load failed" in text:  # the unpickler met bytes that are no pickle at all
        return "it is not a file written by torch.save (wrong file, or damaged): save model.state_dict() with torch.save"
    detail = text.strip().splitlines()[0][:120] if text.strip() else ""
    return f"it is not a file written by torch.save ({type(exc).__name__}{': ' + detail if detail else ''})"


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save atomically, in the standard (contiguous) layout; refuse to replace an existing file unless
    ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise IFMError(f"{path} exists; choose another path or pass --overwrite")
    return atomic_write(path, lambda tmp: torch.save(standard_layout(state_dict), tmp))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file (identifies a checkpoint for caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any], sync: bool = True) -> Path:
    """Append one JSON line: one ``write`` under an exclusive lock, so concurrent writers (sweep shards,
    several processes) never interleave, and earlier lines are never touched. After a torn last line
    (a writer killed mid-line) the record starts on a fresh line. ``sync``: fsync before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(finite_json(record), sort_keys=False, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    return path


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Records of a JSON-lines file; none when there is no such file (missing, or a folder in its place: writers
    refuse that with a clear error). Lines that are no JSON object (torn by a killed writer, not UTF-8, edited by
    hand) are skipped and reported once as an :class:`IFMWarning`."""
    path = Path(path)
    if not path.is_file():
        return
    skipped = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict):
                yield record
            else:
                skipped.append(number)
    if skipped:
        lines = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"{path}: skipped {len(skipped)} line(s) that are no JSON record (line {lines}; "
                      f"a write interrupted by a crash?)", IFMWarning)  # (cli_main shows each message once)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Write a CSV file atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return atomic_write(path, write)
