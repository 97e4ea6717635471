"""Atomic writes of files and folders, with the modes the process umask gives (as ``save_pretrained`` does).

Every writer of the package goes through here. A file or folder is completed under a hidden temporary name in the
same directory, its data is fsynced, and it is then renamed over the final name, so a reader (or a run resumed after
a crash) sees the previous version or the new one, never a mix or a truncated file. A folder replaces an existing one
with one atomic exchange where the system offers it (Linux ``renameat2(RENAME_EXCHANGE)``), else with two renames.

Some libraries write through private temporary files (``safetensors.torch.save_file`` leaves mode 0600); every file
committed here gets ``0o666 & ~umask`` (``0o777 & ~umask`` for folders and executables) like any file the user
creates.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(executable: bool = False) -> int:
    """The mode a new file gets under the current umask (0o644 for umask 0o022)."""
    return (0o777 if executable else 0o666) & ~umask()


def folder_mode() -> int:
    """The mode a new folder gets under the current umask (0o755 for umask 0o022)."""
    return 0o777 & ~umask()


def looks_like_path(name: str) -> bool:
    """Whether ``name``, which does not exist locally, was meant as a local path rather than a Hub id.

    Hub ids are ``name`` or ``owner/name``; anything absolute, relative to ``.`` or ``~``, with a backslash or with
    more than one ``/`` is a mistyped path.
    """
    return os.path.isabs(name) or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or folder entry to disk: a rename is only atomic for data that reached the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")


def _finish_file(path: Path) -> None:
    os.chmod(path, file_mode(executable=bool(path.stat().st_mode & 0o111)))
    fsync_path(path)


# ------------------------------------------------------------------------------------------------------------- files


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that take a file name (``save_file``, ``savefig``).

    When the block ends the file gets the umask's mode, is fsynced and renamed over ``path``; if the block raises,
    ``path`` is left as it was and the temporary file is removed.
    """
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        _finish_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (``"w"`` or ``"wb"``); it replaces ``path`` when done."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}.")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f
        f.flush()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8), atomically."""
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """Replace ``path`` with ``data`` as JSON (trailing newline), atomically."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


# ----------------------------------------------------------------------------------------------------------- folders


def make_folder(path: str | os.PathLike) -> Path:
    """Create the empty folder ``path`` (parents too) with the umask's mode; unlike ``mkdtemp``, not 0700."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o777)  # the umask applies
    return path


def finish_folder(folder: str | os.PathLike) -> None:
    """Give every file and subfolder of ``folder`` the umask's mode and flush them all to disk."""
    folder = Path(folder)
    for root, dirs, files in os.walk(folder):
        for name in files:
            _finish_file(Path(root, name))
        for name in dirs:
            os.chmod(Path(root, name), folder_mode())
        fsync_path(root)
    os.chmod(folder, folder_mode())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where the system or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    status = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if status == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def commit_folder(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Put the completed folder ``staging`` in place of ``final``: readers see the old folder or the new one.

    The files get the umask's modes and are fsynced first; an existing ``final`` is swapped out and then removed.
    """
    staging, final = Path(staging), Path(final)
    finish_folder(staging)
    if final.exists():
        if _exchange(staging, final):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the previous version
        else:
            old = staging.with_name(f"{staging.name}.old")  # cleaned up like a leftover staging folder
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    fsync_path(final.parent)
    return final


@contextmanager
def atomic_folder(final: str | os.PathLike, *, staging: str | os.PathLike | None = None) -> Iterator[Path]:
    """A fresh hidden folder beside ``final`` to write into; it replaces ``final`` when the block ends.

    ``staging`` names the temporary folder (default ``.<name>.tmp-<random>``; a leftover of that name is removed
    first). If the block raises, ``final`` is untouched and the temporary folder is removed.
    """
    final = Path(final)
    tmp = Path(staging) if staging is not None else _temporary_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    make_folder(tmp)
    try:
        yield tmp
        commit_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_files(out_dir: str | os.PathLike, *, staging_name: str = ".files.tmp") -> Iterator[Path]:
    """A hidden folder inside ``out_dir`` whose files are moved into ``out_dir`` one by one when the block ends.

    For folders that hold other things too (a run's checkpoints and logs): each file is replaced atomically and
    the rest of ``out_dir`` stays where it is.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / staging_name
    shutil.rmtree(tmp, ignore_errors=True)
    make_folder(tmp)
    try:
        yield tmp
        finish_folder(tmp)
        for path in sorted(tmp.iterdir()):
            if path.is_dir() and (out_dir / path.name).is_dir():
                commit_folder(path, out_dir / path.name)
            else:
                os.replace(path, out_dir / path.name)
        fsync_path(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
