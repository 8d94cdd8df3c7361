"""Files of a run directory and of the caches, read and written safely.

* Atomic writes: readers see the old file or the new one, never a partial one. A write that fails raises
  :class:`WriteError` (an ``OSError`` naming the file), so that the apps can tell a file that cannot be written from
  one that cannot be read. The temporary file is created (``O_EXCL | O_NOFOLLOW``) and renamed inside the folder
  opened once, so a link planted at the target is replaced, never written through; with ``under``, every folder from
  ``under`` down is opened without following a link.
* Reads (:func:`open_regular`, :func:`read_regular`, :func:`read_json`): never through a symbolic link (``O_NOFOLLOW``
  on the file, and with ``under`` on every folder below it), only regular files (a FIFO, a device such as
  ``/dev/zero``, a directory or a socket is refused without blocking or reading), and at most the size limit of the
  file's kind (:data:`LIMITS`). A refused file is an :class:`UnsafeFile`: one line naming it and the fix.
* JSON is read strictly (:func:`loads_json`): ``NaN``, ``Infinity`` and numbers beyond a float are refused.
* Files written in place by this process or another program (the run directory's lock, Hydra's ``.hydra/*.yaml`` and
  log) are checked first (:func:`open_in_place`, :func:`check_in_place`): a link, a hard link or a non-regular file is
  refused, so a prepared run directory cannot make an app truncate or append to a file elsewhere.
* Temporary folders (:func:`private_temp_dir`) carry their owner's PID in their name and are swept
  (:func:`sweep_temp_dirs`) once that process is gone (killed with SIGKILL, a Ray worker ended by Ray).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from hysquant_rl.errors import HySquantError


class WriteError(OSError):
    """A file that could not be written (its ``filename``, ``errno`` and ``strerror`` are the failed call's)."""


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], under: str | os.PathLike | None = None
) -> Path:
    """Write ``path`` atomically: ``write`` fills a temporary file in the same directory, which is fsynced
    and then renamed over ``path``. Readers see the old file or the new one, never a partial one; on any
    error the temporary file is removed and ``path`` is untouched. Creates missing parent directories.

    The folder is opened once and the temporary file created in it with ``O_EXCL | O_NOFOLLOW`` and renamed there: a
    symbolic link at ``path`` is replaced by the file, never written through. With ``under`` (a folder above ``path``,
    e.g. the run directory), every folder between it and ``path`` is opened (and created) without following a link:
    a link planted there is an :class:`UnsafeFile`, not a write elsewhere."""
    path = Path(path)
    try:
        dir_fd, name = _parent(path, under, create=True)
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(e.filename or path)) from e
    tmp = None
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(100):
            tmp = f".{name}.{secrets.token_hex(4)}.tmp"
            try:
                fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
                break
            except FileExistsError:
                tmp = None
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        os.close(dir_fd)
        if isinstance(e, OSError) and not isinstance(e, WriteError):  # a write() names no file: name ours
            raise WriteError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    try:  # make the rename itself durable; not every file system can fsync a directory
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically. Serialised in memory first: torch's zip writer turns a write
    that fails (a full disk) into a ``RuntimeError``; written from memory it is the ``OSError`` it is."""
    return atomic_write(path, lambda f: f.write(torch_bytes(obj)))


def torch_bytes(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def npz_bytes(**arrays: Any) -> bytes:
    """``arrays`` as ``numpy.savez`` writes them (no pickles: object arrays are refused)."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()}, allow_pickle=False)
    return buffer.getvalue()


def records(frame: Any) -> list[dict[str, Any]]:
    """A pandas DataFrame's rows as JSON-ready dicts: numpy scalars -> Python numbers, NaN -> None."""
    out = []
    for row in frame.to_dict("records"):
        row = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
        out.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return out


def save_json(obj: Any, path: str | os.PathLike, under: str | os.PathLike | None = None) -> Path:
    """Indented JSON (serialised first: a bad value leaves no file), written atomically (:func:`atomic_write`, with
    ``under``). NaN and Infinity are not JSON: a document holding one is a :class:`HySquantError` naming where it is,
    and no file is written."""
    text = json_bytes(obj, path)
    return atomic_write(path, lambda f: f.write(text), under=under)


def json_bytes(obj: Any, path: str | os.PathLike = "the file", indent: int = 2) -> bytes:
    """``obj`` as indented JSON bytes; a NaN or an infinity anywhere in it is a :class:`HySquantError` naming its key
    (and ``path``, the file it was meant for)."""
    try:
        return (json.dumps(obj, indent=indent, allow_nan=False) + "\n").encode()
    except ValueError:
        where = non_finite(obj)
        if where is None:
            raise
        raise HySquantError(
            f"cannot write {path}: {where[0] or 'the value'} is {where[1]}, which JSON cannot hold: a budget, metric"
            " or setting is not a finite number; check the settings that produced it"
        ) from None


def finite_or_none(obj: Any) -> Any:
    """A JSON-like tree with every NaN or infinite float replaced by None (a record of an evaluation that failed,
    kept as JSON can hold it)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def non_finite(obj: Any, where: str = "") -> tuple[str, float] | None:
    """The first NaN or infinite float in a JSON-like tree ``obj``, as (its key path, the value); None if none.
    Iterative: a tree of any depth."""
    stack: list[tuple[str, Any]] = [(where, obj)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return key, value
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{key}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def load_error(e: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words on one line: the reason, without
    torch's advice to load it with ``weights_only=False`` (which runs whatever the file holds)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if type(e).__name__ == "UnpicklingError":
        found = (line[line.find(k) :] for line in lines for k in ("Trying to load", "Unsupported") if k in line)
        reason = next(found, "")  # after torch's "WeightsUnpickler error: " where it writes one
        if "GLOBAL" in reason or "global" in reason:
            return f"it holds Python objects, not only tensors ({reason.rstrip('.')}); they are never loaded"
        return f"not a file of tensors ({reason.rstrip('.') or 'unreadable pickle'})"
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def check_writable(folder: str | os.PathLike, what: str, fix: str) -> None:
    """A one-line :class:`HySquantError` ("cannot write ``what`` ``folder`` (cause): ``fix``") when ``folder`` cannot
    be created or a file cannot be made in it: checked by doing so (permission bits do not bind root, and
    ``os.access`` does not see a read-only mount), before work whose result would be lost."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise HySquantError(f"cannot write {what} {folder} ({e.strerror or e}): {fix}") from None


# -- files of a run directory and of the caches: never through a link, only regular files, bounded ------------------

MiB, GiB = 1 << 20, 1 << 30
LIMITS: dict[str, int] = {
    "settings": 4 * MiB,  # run_settings.json, policies, checkpoint manifests, Hydra's YAML: a few kB when whole
    "json": 64 * MiB,  # documents that grow with a run: LUT caches, state.json, agent.json, per-unit latency tables
    "arrays": 4 * GiB,  # .npz: replay buffers, episode stores
    "tensors": 4 * GiB,  # .pt: agent networks and optimisers, model weights
    "model": 4 * GiB,  # deployable files: .onnx, OpenVINO's .xml/.bin, ExecuTorch's .pte
    "data": 16 * GiB,  # data archives
}
"""Size limits per kind of file [bytes]: far above any file hysquant-rl writes, far below what would exhaust the
memory (``/dev/zero``, a runaway file)."""

_REFUSE = "replace it with the file itself (a regular file; links are never followed in a run directory or a cache)"


class UnsafeFile(HySquantError):
    """A file that is not read or written: a symbolic link (never followed), not a regular file (a FIFO, a device, a
    directory, a socket), a hard link where it would be written in place, or larger than its kind's limit. ``path``
    and ``problem`` (a few words, e.g. ``a FIFO, not a regular file``) let a caller word a line of its own."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str | None = None) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path} is {problem}: {fix or _REFUSE}")


def _what(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link, which is never followed"),
        (stat.S_ISFIFO, "a FIFO (named pipe), not a regular file"),
        (stat.S_ISCHR, "a character device, not a regular file"),
        (stat.S_ISBLK, "a block device, not a regular file"),
        (stat.S_ISDIR, "a directory, not a regular file"),
        (stat.S_ISSOCK, "a socket, not a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _limit(limit: int | str) -> tuple[int, str]:
    if isinstance(limit, str):
        return LIMITS[limit], f"a {limit} file"
    return int(limit), "this file"


def _size(n: int) -> str:
    return f"{n / GiB:.3g} GiB" if n >= GiB else f"{n / MiB:.3g} MiB" if n >= MiB else f"{n} bytes"


def _refused(path: Path, e: OSError, fix: str | None, dir_fd: int | None = None, name: str | None = None) -> Exception:
    """The :class:`UnsafeFile` an ``open`` error means (a link met with ``O_NOFOLLOW``, a socket, a directory), else
    ``e`` naming ``path``."""
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR, errno.EMLINK):
        try:
            mode = os.lstat(name if name is not None else path, dir_fd=dir_fd).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            return UnsafeFile(path, _what(mode), fix)
    return type(e)(e.errno, e.strerror or str(e), str(path))


def _parent(path: Path, under: str | os.PathLike | None, create: bool = False) -> tuple[int, str]:
    """(a descriptor of ``path``'s folder, ``path``'s name). Without ``under`` the folder is opened as named; with it,
    ``under`` is opened as named and every folder below it, down to ``path``'s, without following a link (created when
    ``create``). The caller closes the descriptor."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if under is None:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path.parent, flags), path.name
    root = Path(under)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise UnsafeFile(path, f"outside {root}", f"files of {root} stay inside it") from None
    if not parts or any(p in ("..", ".") for p in parts):
        raise UnsafeFile(path, f"not a file inside {root}", f"files of {root} stay inside it")
    if create:
        root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, flags)
    where = root
    try:
        for part in parts[:-1]:
            where = where / part
            if create:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nxt = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                raise _refused(where, e, None, fd, part) from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def open_regular(
    path: str | os.PathLike,
    limit: int | str = "json",
    *,
    under: str | os.PathLike | None = None,
    follow: bool = False,
    fix: str | None = None,
) -> BinaryIO:
    """``path`` opened for reading (binary, at its start; the caller closes it) when it is a regular file of at most
    ``limit`` bytes (a number, or a kind of :data:`LIMITS`). Never through a symbolic link: ``O_NOFOLLOW`` on the file
    (``follow``: a path the user named, whose link is theirs to make), and with ``under`` on every folder from there
    down (:func:`atomic_write`). A FIFO or a device is refused without blocking or reading. Raises :class:`UnsafeFile`
    (one line naming the file and ``fix``) for what it refuses, and the ``OSError`` of a file that cannot be opened
    (missing, no permission) naming ``path``."""
    path = Path(path)
    most, kind = _limit(limit)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    dir_fd, name = _parent(path, under) if under is not None else (None, str(path))
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        raise _refused(path, e, fix, dir_fd, name) from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(path, _what(st.st_mode), fix)
        if st.st_size > most:
            raise UnsafeFile(path, f"{_size(st.st_size)}, more than {kind} may hold ({_size(most)})", fix)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(
    path: str | os.PathLike,
    limit: int | str = "json",
    *,
    under: str | os.PathLike | None = None,
    follow: bool = False,
    fix: str | None = None,
) -> bytes:
    """The bytes of ``path``, read as :func:`open_regular` opens it; a file that grows past ``limit`` while it is read
    is refused too."""
    most, kind = _limit(limit)
    with open_regular(path, limit, under=under, follow=follow, fix=fix) as f:
        data = f.read(most + 1)
    if len(data) > most:
        raise UnsafeFile(path, f"more than {kind} may hold ({_size(most)})", fix)
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can hold (NaN and Infinity are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond a float (NaN and Infinity are refused)")
    return value


def loads_json(text: str | bytes, allow_nan: bool = False) -> Any:
    """``json.loads``, strict unless ``allow_nan``: ``NaN``, ``Infinity``, ``-Infinity`` and numbers beyond a float
    (``1e999``) are a ``ValueError`` rather than values that switch comparisons off."""
    if allow_nan:
        return json.loads(text)
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def read_json(
    path: str | os.PathLike,
    limit: int | str = "json",
    *,
    under: str | os.PathLike | None = None,
    follow: bool = False,
    fix: str | None = None,
    allow_nan: bool = False,
) -> Any:
    """The JSON document in ``path``, read as :func:`read_regular` reads it and parsed by :func:`loads_json`. Raises
    :class:`UnsafeFile`, ``OSError``, ``UnicodeDecodeError``, ``ValueError`` (invalid JSON, NaN) or
    ``RecursionError`` (nested beyond reason): the caller names the file in its own line."""
    return loads_json(read_regular(path, limit, under=under, follow=follow, fix=fix).decode("utf-8"), allow_nan)


def open_in_place(path: str | os.PathLike, fix: str | None = None) -> int:
    """A descriptor of ``path`` opened for reading and writing in place (created when missing, mode 0644): a regular
    file with one name. A symbolic link (dangling or not), a hard link to another file, a FIFO, a device or a
    directory there is an :class:`UnsafeFile`, so writing to the descriptor cannot change a file elsewhere."""
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise _refused(path, e, fix) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(path, _what(st.st_mode), fix)
        if st.st_nlink > 1:
            raise UnsafeFile(path, f"a hard link ({st.st_nlink} names for one file), which is never written", fix)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_in_place(path: str | os.PathLike, folder: bool = False, fix: str | None = None) -> None:
    """``path`` may be written in place by another program (Hydra's ``.hydra/*.yaml`` and log file): absent, or a
    regular file with one name (``folder``: a directory), never a link. Raises :class:`UnsafeFile` otherwise."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file in the way is the caller's to report)
        return
    if folder:
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeFile(path, _what(st.st_mode).replace("not a regular file", "not a directory"), fix)
        return
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(path, _what(st.st_mode), fix)
    if st.st_nlink > 1:
        raise UnsafeFile(path, f"a hard link ({st.st_nlink} names for one file), which is never written", fix)


# -- temporary folders: removed on every exit path, swept once their owner is gone ----------------------------------

TEMP_PREFIX = "hysquant-"  # every temporary folder of the package: hysquant-<kind>-<owner PID>-<random>
_OWNED = re.compile(r"[a-z]+-(\d+)-")
_LEGACY_AGE_S = 3600.0  # a folder of an older hysquant-rl (no PID in its name) is only needed for seconds


def private_temp_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder ``hysquant-<kind>-<PID>-<random>`` (mode 0700) in the system's temporary directory, after
    sweeping those whose owner is gone (:func:`sweep_temp_dirs`). Use it with ``with`` (or call ``cleanup()``): it is
    removed on return, on an exception, and at interpreter exit; a process killed with SIGKILL (a Ray worker that
    Ray ends) leaves it for the next sweep."""
    sweep_temp_dirs()
    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{kind}-{os.getpid()}-")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_temp_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove this user's ``hysquant-<kind>-<PID>-*`` folders in ``root`` (default: the system's temporary directory)
    whose owner process is gone (``os.kill(pid, 0)``), and folders of an older hysquant-rl (no PID in the name) last
    changed over an hour ago. Never follows a link; never fails (a folder it cannot remove stays). Returns what it
    removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        owner = _OWNED.match(entry.name[len(TEMP_PREFIX) :])
        if owner is not None:
            if _alive(int(owner.group(1))):
                continue
        elif time.time() - st.st_mtime < _LEGACY_AGE_S:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed
