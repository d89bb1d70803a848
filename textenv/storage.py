"""The one I/O layer: atomic files, safetensors + JSON, checkpoint sets, the run-directory lock.

Everything the project writes goes through here, so every writer gets the same guarantees:

- `atomic_write`: a file is written to a temporary name in its own directory, flushed to
  disk, given the permissions the umask asks for, and renamed over the target in one step.
  A crash leaves the old file or the new one, never half of one.
- `save_tensors` / `load_tensors`: safetensors weights (loading never executes code); errors
  name the file.
- `Checkpoints`: a checkpoint is a SET of files (weights, optimizer, trainer state, RNGs)
  written into a fresh directory and made current by one atomic rename; the previous
  complete checkpoint stays until the new one is in place.
- `RunDirLock`: one training run per run directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# ---- single files ----------------------------------------------------------------------------
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is a plain file name (letters, digits, '_', '-', '.'; no path, no leading
    dot): names of saved models are joined to a directory and must stay inside it."""
    if not isinstance(name, str) or not _PLAIN_NAME.match(name) or ".." in name:
        raise ValueError(f"{what} {name!r} must be a plain file name (letters, digits, '_', "
                         f"'-', '.'), not a path")
    return name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[str], None]) -> None:
    """Write `data` (bytes, text, or a function that writes a file at the path it is given)
    to `path` atomically: temp file in the same directory, fsync, chmod, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give the file the mode of the one it replaces, or the
        # umask's default, as any other file the user creates.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """JSON (indented, trailing newline) written atomically."""
    atomic_write(path, json.dumps(obj, indent=1, default=str) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """A JSON object from `path`; errors name the file and say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"could not parse {what} {path}: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}")
    return obj


# ---- tensors ---------------------------------------------------------------------------------
def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file, atomically. Tensors sharing storage (tied weights) are stored apart:
    safetensors refuses shared storage."""
    seen, out = set(), {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        out[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    atomic_write(path, lambda tmp: save_file(out, tmp))


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing or corrupt file raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error type on corrupt files
        raise ValueError(f"could not read weights file {path}: {e}") from e


def check_tensors(tensors: dict, expected: dict, w_path, cfg_path) -> None:
    """Raise a ValueError naming the weights file and the first tensor that is missing,
    unexpected, of the wrong shape or dtype, or not finite. `expected`: name -> tensor of
    the model being loaded (its shape and dtype are what the file must hold)."""
    for key, ref in expected.items():
        if key not in tensors:
            raise ValueError(f"{w_path}: missing tensor '{key}' (expected shape "
                             f"{tuple(ref.shape)}) for config {cfg_path}")
        t = tensors[key]
        if t.shape != ref.shape:
            raise ValueError(f"{w_path}: tensor '{key}' has shape {tuple(t.shape)}"
                             f", expected {tuple(ref.shape)} from config {cfg_path}")
        if t.dtype != ref.dtype:
            raise ValueError(f"{w_path}: tensor '{key}' has dtype {t.dtype}, expected "
                             f"{ref.dtype} (the file was not written by this model)")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{w_path}: tensor '{key}' holds NaN or inf values")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"{w_path}: unexpected tensor '{extra[0]}' (shape "
                         f"{tuple(tensors[extra[0]].shape)}) not in config {cfg_path}")


# ---- checkpoint sets -------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """Checkpoint sets under `<run_dir>/checkpoints/`, one directory per iteration:

        checkpoints/iter_00000040/   a complete set (weights, optimizer, state.json, ...)
        checkpoints/iter_00000060/   the newest complete set: what a resume loads

    `save(iteration, write)` calls `write(directory)` on a fresh hidden directory, flushes
    every file in it, then renames it to `iter_<iteration>` in one atomic step: a directory
    named `iter_*` is therefore always complete, and a kill at any moment leaves the
    previous one intact. Only then are sets older than the newest `keep` removed.
    """

    PATTERN = re.compile(r"^iter_(\d{8})$")

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(run_dir) / "checkpoints"
        self.keep = int(keep)

    def complete(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and self.PATTERN.match(p.name)]
        return sorted(found, key=lambda p: int(self.PATTERN.match(p.name).group(1)))

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        done = self.complete()
        return done[-1] if done else None

    def save(self, iteration: int, write: Callable[[Path], None]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"iter_{int(iteration):08d}"
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{final.name}."))
        try:
            write(tmp)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
            if final.exists():  # a set of the same iteration from an earlier attempt
                shutil.rmtree(final)
            os.rename(tmp, final)  # the one step that makes the new set current
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".iter_*"):  # temp sets left by killed runs
            if stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
        return final


# ---- the run-directory lock ------------------------------------------------------------------
class RunDirLocked(RuntimeError):
    """Another live process holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunDirLock:
    """`<run_dir>/.lock` holding the owner's pid and host, created exclusively.

    A second run on the same directory is refused with a message naming the holder. A lock
    whose process is gone (same host, pid not alive) is stale: it is taken over, with a
    warning. Use it as a context manager; the lock is removed on exit.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or self._stale(holder):
                    print(f"taking over a stale lock {self.path} "
                          f"(holder {holder or 'unreadable'} is not running)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunDirLocked(
                    f"run directory {self.path.parent} is in use by pid {holder.get('pid')} on "
                    f"{holder.get('host')} (since {holder.get('started')}); wait for that run, "
                    f"choose another --run-dir, or delete {self.path} if that process is "
                    f"gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunDirLocked(f"could not take the lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # another machine: its process cannot be checked from here
        pid = holder.get("pid")
        return not isinstance(pid, int) or not _pid_alive(pid)

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
