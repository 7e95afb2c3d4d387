"""A run's output directory as a transaction: the run writes into a fresh sibling
``.<name>.partial``, created exclusively (so a second run into the same ``--out`` refuses at
once), and only a complete run is renamed into place. ``--overwrite`` swaps whole directories
(``renameat2(RENAME_EXCHANGE)`` where the kernel has it), so a kill at any moment leaves either
the complete old run or the complete new one, never a mixture.

A killed or interrupted run leaves its ``.partial`` directory, step checkpoints included, for
``belief-lens demo --resume <name>``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from belief_lens.errors import BeliefLensError
from belief_lens.storage import fsync_path, lock_owner

__all__ = ["MARKER", "RunDir", "staging_path"]

#: The file in a ``.partial`` directory naming the process writing it; removed when complete.
MARKER = ".run-in-progress"


def staging_path(final: Path) -> Path:
    """Where a run into ``final`` is written until it is complete."""
    return final.parent / f".{final.name}.partial"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@dataclass(frozen=True)
class RunDir:
    """A run being written: ``staging`` now, renamed to ``final`` by :meth:`commit`."""

    final: Path
    staging: Path

    @property
    def checkpoints(self) -> Path:
        """Where the run's step checkpoints go (inside the run, so a kill keeps them)."""
        return self.staging / "checkpoints"

    @classmethod
    def open(cls, final: str | os.PathLike, *, overwrite: bool, resume_hint: str) -> RunDir:
        """Claim ``final`` for a new run: refuse it when it holds files (unless ``overwrite``),
        when another run is writing it, or when an interrupted run waits there to be resumed
        (``resume_hint`` is the command that resumes it)."""
        final = Path(final)
        if final.exists() and not final.is_dir():
            raise BeliefLensError(f"--out {final} exists and is not a directory")
        if _holds_files(final) and not overwrite:
            raise BeliefLensError(
                f"--out {final} already holds files (of another run?); choose a new directory, "
                "leave out --out for a fresh runs/<process>-<time> one, or pass --overwrite"
            )
        staging = staging_path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                os.mkdir(staging)
                break
            except FileExistsError:
                cls._refuse_busy(final, staging, resume_hint)
        else:
            raise BeliefLensError(f"cannot create {staging} for --out {final}")
        (staging / MARKER).write_text(f"{os.getpid()}\n")
        return cls(final, staging)

    @staticmethod
    def _refuse_busy(final: Path, staging: Path, resume_hint: str) -> None:
        """``staging`` exists: refuse if a run is writing it or waits there to be resumed;
        remove it if it is the leftover of a completed swap (no marker)."""
        marker = staging / MARKER
        if not marker.exists():
            shutil.rmtree(staging, ignore_errors=True)  # an old run swapped out, not yet deleted
            return
        owner = lock_owner(marker)
        if owner is not None:
            raise BeliefLensError(
                f"another run (process {owner}) is writing --out {final} (into {staging}); "
                "wait for it or choose another --out"
            )
        raise BeliefLensError(
            f"an interrupted run into --out {final} waits in {staging}; resume it with "
            f"`{resume_hint}`, or delete {staging} to start afresh"
        )

    @classmethod
    def resume(cls, final: str | os.PathLike) -> RunDir:
        """Claim the interrupted run into ``final`` to finish it."""
        final = Path(final)
        staging = staging_path(final)
        marker = staging / MARKER
        if not marker.is_file():
            raise BeliefLensError(
                f"no interrupted run of {final} to resume ({staging} does not exist or is done)"
            )
        owner = lock_owner(marker)
        if owner is not None:
            raise BeliefLensError(f"process {owner} is still running {final}; wait for it")
        marker.write_text(f"{os.getpid()}\n")
        return cls(final, staging)

    def clear_outputs(self) -> None:
        """Remove what an interrupted run wrote besides its checkpoints and settings, so the
        resumed run writes its outputs afresh."""
        for entry in self.staging.iterdir():
            if entry.name not in (MARKER, "args.json", self.checkpoints.name):
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def commit(self) -> Path:
        """Move the complete run into place: a rename onto a new (or empty) ``final``, or an
        atomic exchange with the old run, which is then deleted. Returns ``final``."""
        fsync_path(self.staging)
        if not _holds_files(self.final):
            with contextlib.suppress(FileNotFoundError, OSError):
                self.final.rmdir()  # an empty directory the user made
            try:
                os.rename(self.staging, self.final)
            except OSError as err:
                raise BeliefLensError(
                    f"--out {self.final} was written by another run meanwhile; this run's "
                    f"results are in {self.staging} ({err.strerror})"
                ) from None
        else:
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            if _exchange(self.staging, self.final):
                os.rename(self.staging, old)  # the old run, now under the staging name
            else:  # no atomic swap here: two renames (a kill between leaves both intact)
                os.rename(self.final, old)
                os.rename(self.staging, self.final)
            shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.final / MARKER).unlink()
        fsync_path(self.final.parent)
        return self.final
