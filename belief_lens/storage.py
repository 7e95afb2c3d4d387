"""Atomic file writes (a crash mid-write leaves the previous file intact), safetensors files that
carry a sha256 of their tensors and refuse to replace an existing file unless asked, and
JSON-ready values."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from belief_lens.errors import BeliefLensError

#: The safetensors metadata key holding the sha256 of a file's tensors (see ``tensors_sha256``).
CHECKSUM_KEY = "belief_lens_sha256"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or directory's contents to disk (directories: their entries, after a
    rename), so that a crash cannot leave a renamed but empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path``, after refusing it when it exists and ``overwrite`` is not set (a cheap check
    before the work of a save; ``atomic_write`` checks again, atomically)."""
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise BeliefLensError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    return path


def _place(tmp: str, path: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``path``: replacing it, or (``overwrite=False``) only if it does not exist,
    atomically (a hard link fails on an existing name), so two writers cannot both win."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise BeliefLensError(f"{str(path)!r} exists; pass overwrite=True to replace it") from None
    except OSError:  # a filesystem without hard links: check, then rename
        refuse_existing(path, overwrite)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], object], *, overwrite: bool = True
) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then move it into place
    (and fsync the directory). With ``overwrite=False`` an existing ``path`` is never replaced:
    the move refuses atomically.

    The file gets the permissions a plain ``open(path, "w")`` would (``0o666`` less the umask).
    """
    path = refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        _place(tmp, path, overwrite)
        fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """The sha256 of named tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``tensors`` as one safetensors file, atomically, with ``metadata`` and the sha256
    of the tensors (``CHECKSUM_KEY``); an existing file is kept unless ``overwrite=True``."""
    path = refuse_existing(path, overwrite)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**metadata, CHECKSUM_KEY: tensors_sha256(tensors)}
    return atomic_write(
        path,
        lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=meta),
        overwrite=overwrite,
    )


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """A safetensors file's metadata and its tensors' shapes, read from the header alone (no
    tensor is allocated), so a load can check them first."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise BeliefLensError(f"cannot read {str(path)!r} as safetensors: {err}") from None
    return meta, shapes


def load_tensors(
    path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, checked against the sha256 in its metadata when the
    file carries one (older files without it still load). A mismatch raises naming the file."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            if metadata is None:
                metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise BeliefLensError(f"cannot read {str(path)!r} as safetensors: {err}") from None
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and tensors_sha256(tensors) != expected:
        raise BeliefLensError(
            f"{str(path)!r} is corrupt: its tensors do not match the sha256 in its metadata "
            "(a damaged or partly overwritten file); restore it or write it again"
        )
    return tensors


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path`` (never over an existing file when
    ``overwrite=False``)."""
    return atomic_write(
        path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite
    )


def jsonable(x: Any) -> Any:
    """``x`` with tensors, numpy scalars and tuples turned into JSON types; non-finite floats
    become the strings ``"nan"``/``"inf"`` (strict JSON has no such numbers)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (int, float, bool, str)):
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def lock_owner(path: str | os.PathLike) -> int | None:
    """The live process id written in the lock file ``path``, or None (absent, stale or
    unreadable: a killed run's lock)."""
    try:
        pid = int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str):
    """Hold the lock file ``path`` (created with ``O_EXCL``, holding this process id) for the
    duration: a second holder refuses at once, naming ``what``. A lock left by a killed process
    is taken over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = lock_owner(path)
            if owner is not None:
                raise BeliefLensError(
                    f"another run (process {owner}) is writing {what}; wait for it or choose "
                    f"another output (its lock: {path})"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a killed run's lock
    else:
        raise BeliefLensError(f"cannot take the lock {path} for {what}")
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
