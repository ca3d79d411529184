"""Safe ``.npz`` files for every file the engine writes (model files, checkpoints, session-store
snapshots): no pickle on either side, atomic writes, and reading that checks each archive
member before NumPy parses it.

Writing (:func:`write_npz`) is atomic: a temporary ``.tmp-<random>.npz`` in the target folder,
renamed over the target. The file gets the mode ``open`` would give it (``0o666`` less the
process umask), or the existing target's mode. Stale temporaries of a save that was killed are
removed by the next save into the same folder; the rule is in :func:`remove_stale_temp_files`.
Errors are :class:`~gru_engine.exceptions.ModelFileError` (a ``ValueError``) with a plain
message naming the file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import stat
import time
import zipfile

import numpy as np

from .exceptions import ModelFileError

logger = logging.getLogger("gru_engine")

#: a temporary file of a save is stale (removable) once unmodified for this many seconds
STALE_SECONDS = 60.0
_TMP_PREFIX, _TMP_SUFFIX = ".tmp-", ".npz"


def check_writable(path) -> None:
    """Raise :class:`ModelFileError` unless a model file can be written at ``path`` (its folder
    exists and accepts a new file, and ``path`` is not a folder): checked by creating and
    removing a temporary file there, so permissions, ACLs and read-only mounts all count."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ModelFileError(f"cannot write the model to {path}: it is a folder")
    if not os.path.isdir(folder):
        raise ModelFileError(f"cannot write the model to {path}: folder {folder} does not exist")
    fd, tmp = _create_temp(folder, path)
    os.close(fd)
    os.remove(tmp)


def write_npz(path: str, arrays: dict) -> None:
    """``np.savez(path, **arrays)`` atomically: a temporary file in the same folder (locked
    while written), renamed over ``path``. Mode: ``path``'s if it exists, else what ``open``
    gives a new file. Removes stale temporaries first (:func:`remove_stale_temp_files`).
    :class:`ModelFileError` when the file cannot be written."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ModelFileError(f"cannot write the model to {path}: it is a folder")
    remove_stale_temp_files(folder)
    try:
        st = os.stat(path)
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None
    except OSError:
        mode = None
    fd, tmp = _create_temp(folder, path)
    try:
        _lock(fd, block=True)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ModelFileError(f"cannot write the model to {path}: "
                                 f"{exc.strerror or exc}") from None
        raise


def _create_temp(folder: str, path: str):
    """``(fd, name)`` of a new ``.tmp-<random>.npz`` in ``folder``, created as ``open`` would
    (mode 0o666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f"{_TMP_PREFIX}{secrets.token_hex(8)}{_TMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise ModelFileError(f"cannot write the model to {path}: "
                                 f"{exc.strerror or exc}") from None


def _lock(fd: int, block: bool) -> bool:
    """An exclusive ``flock`` on ``fd``; False when another process holds it (``block=False``).
    True without locking where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the age rule alone applies
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks: the age rule alone applies
        return True
    return True


def _is_partial_npz(head: bytes) -> bool:
    """``head`` (a file's first bytes) starts a zip entry named ``*.npy``: what ``np.savez``
    writes first."""
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return False
    n = int.from_bytes(head[26:28], "little")
    return head[30:30 + n].endswith(b".npy")


def remove_stale_temp_files(folder, min_age: float = STALE_SECONDS) -> list:
    """Remove the temporaries that killed saves left in ``folder``; returns their paths.

    The rule: a regular file named ``.tmp-*.npz``, owned by this user, whose first bytes are
    an ``.npz`` archive's first entry (what our writer starts with), not modified for
    ``min_age`` seconds, and not locked (a save in progress holds an exclusive ``flock`` on its
    temporary; the lock dies with the process). A save in progress is never removed: it is
    locked (this version) or being written, hence recent (older versions, which did not lock).
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    uid = os.getuid() if hasattr(os, "getuid") else None
    for name in names:
        if not (name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX)):
            continue
        p = os.path.join(folder, name)
        try:
            st = os.lstat(p)
            if (not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age
                    or (uid is not None and st.st_uid != uid)):
                continue
            with open(p, "rb") as f:
                if not _is_partial_npz(f.read(64)) or not _lock(f.fileno(), block=False):
                    continue
                os.remove(p)
            removed.append(p)
        except OSError:
            continue
    if removed:
        logger.info("removed %d stale temporary file(s) of killed saves in %s", len(removed),
                    folder)
    return removed


def read_arrays(path) -> dict:
    """Every array of an ``.npz`` file, without pickle, each checked against what the archive
    holds before it is read; :class:`ModelFileError` with a plain message otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path} is a folder, not a model file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file: {exc.strerror or exc}") from None
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes), not a model file")
    if magic != b"PK\x03\x04":
        raise ModelFileError(f"{path} is not a gru_engine model file (not an .npz archive)")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename
                if not name.endswith(".npy") or "/" in name:
                    raise ModelFileError(f"{path}: unexpected member {name!r} (a model file "
                                         "holds only .npy arrays)")
                key = name[:-4]
                if key in arrays:
                    raise ModelFileError(f"{path}: array {key!r} appears twice")
                if info.file_size > max(1000 * info.compress_size, 1 << 20):
                    raise ModelFileError(f"{path}: array {key!r} inflates {info.compress_size} "
                                         f"bytes to {info.file_size}: not a model file")
                with z.open(info) as fp:
                    version = np.lib.format.read_magic(fp)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
                    header_len = fp.tell()
                if dtype.hasobject:
                    raise ModelFileError(f"{path}: array {key!r} holds Python objects (pickled "
                                         "data), which model files never contain")
                need = math.prod(shape) * dtype.itemsize
                if need != info.file_size - header_len:
                    raise ModelFileError(
                        f"{path}: array {key!r} declares shape {shape} of {dtype} ({need} "
                        f"bytes) but holds {info.file_size - header_len} bytes: truncated or "
                        "corrupt")
                with z.open(info) as fp:
                    arrays[key] = np.lib.format.read_array(fp, allow_pickle=False)
    except ModelFileError:
        raise
    except Exception as exc:  # zipfile, zlib, numpy's parser: all mean a damaged archive
        raise ModelFileError(f"{path}: unreadable model file, truncated or corrupt "
                             f"({type(exc).__name__}: {exc})") from None
    return arrays


def read_header(arrays, path: str) -> dict:
    """The JSON header (a dict) of a model file's ``arrays`` (:func:`read_arrays`, or an open
    ``np.load``); :class:`ModelFileError` (a ``ValueError``) when it is missing or unreadable."""
    raw = arrays["header"] if "header" in arrays else None
    if raw is None:
        raise ModelFileError(f"{path} is not a gru_engine model file (no header)")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFileError(f"{path}: array 'header' has dtype {raw.dtype} and {raw.ndim} "
                             "dimension(s), expected 1-D uint8 (UTF-8 JSON)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelFileError(f"{path}: unreadable model header (not UTF-8 JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the model header is not a JSON object")
    return header
