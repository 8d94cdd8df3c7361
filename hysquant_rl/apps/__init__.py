"""The console scripts, one module each, all over the shared ``conf/`` tree:

    hysquant-train    apps/train.py   train (or report) the embedded default model
    hysquant-lut      apps/lut.py     build the sensitivity lookup table (LUT)
    hysquant-search   apps/search.py  search a mixed-precision policy under hardware budgets
    hysquant-apply    apps/apply.py   evaluate a policy on the test split and write the quantized model
    hysquant-bench    apps/bench.py   every search method under the same budgets, figures and plots

This is the only layer that sees a Hydra config: each app resolves it once (:func:`plain`, then the settings'
``from_mapping``) into the typed settings of :mod:`hysquant_rl.settings` and passes those down;
:func:`compose_config` gives scripts and tests the same config outside an app. A :class:`HySquantError` ends a
run with one ``error: ...`` line on stderr and exit status 2. In a sweep (``-m``) a failing job prints its line and
the sweep goes on; the sweep's exit status is the number of jobs that failed.

One app per run directory: each job holds an exclusive ``fcntl.flock`` on ``<run dir>/.hysquant.lock`` (the kernel
releases it when the process ends, however it ends); a second app in the same directory is refused in one line
naming the holder's PID. A run directory is never written through a link: the lock file is opened without following
one (:func:`hysquant_rl.io.open_in_place`), and Hydra's own files (``.hydra/*.yaml``, ``<app>.log``) are checked
before Hydra writes them; a ``hydra.run.dir`` with characters Hydra's override grammar reserves (``; & | ( ) ,``,
non-ASCII letters, a newline) is passed to Hydra quoted, so it names exactly the folder given.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import importlib.resources
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hysquant_rl.errors import HySquantError
from hysquant_rl.io import UnsafeFile, WriteError, check_in_place, open_in_place, sweep_temp_dirs

log = logging.getLogger("hysquant_rl")
CONF_DIR = str(importlib.resources.files("hysquant_rl.conf"))
LOCK_FILE = ".hysquant.lock"  # in a run directory: the flock its one running app holds, and that app's PID
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # whatever the call: a write failed
_held: dict[Path, int] = {}  # run directories this process holds: resolved path -> the lock file's descriptor


def run_dir() -> Path:
    """The Hydra run directory of the current job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def compose_config(app: str, overrides: list[str] | None = None) -> DictConfig:
    """The config ``conf/<app>.yaml`` with command-line style ``overrides``, as the app composes it (for scripts
    and tests that call the library outside an app)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(app, overrides=list(overrides or []))


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved; a value left ``???`` is a one-line error."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise HySquantError(f"{', '.join(missing)} must be set: pass {missing[0]}=... on the command line")
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Make ``fn(cfg)`` a Hydra console script over ``conf/<config_name>.yaml`` that turns a
    :class:`HySquantError` into one ``error:`` line and exit status 2 (in a sweep: the number of failed jobs)."""

    def deco(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        failed: list[str] = []
        given: list[list[str]] = []  # the command line as given, while Hydra runs with its run directory quoted

        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            if given:  # what a job records of its command line is what the user typed
                sys.argv = given[0]
            here, taken = run_dir(), False
            try:
                taken = lock_run_dir(here, f"hysquant-{config_name}")  # False: main() holds it already
                return fn(cfg)
            except HySquantError as e:
                message, code = str(e), getattr(e, "exit_code", 2)
            except KeyboardInterrupt:
                message, code = "interrupted: what was measured before is kept (the LUT cache, the checkpoints)", 130
            except OSError as e:  # a directory that cannot be written, a full disk, a file that cannot be read
                message, code = os_error_message(e), 2
            finally:
                if taken:
                    unlock_run_dir(here)
            report(message)
            if not _in_sweep():
                sys.exit(code)
            failed.append(str(here))  # the sweep goes on with its next job

        run = hydra.main(version_base=None, config_path=CONF_DIR, config_name=config_name)(task)

        @functools.wraps(fn)
        def main() -> Any:
            failed.clear()
            sweep_temp_dirs()  # temporary folders of processes that were killed (kill -9, Ray's workers)
            args = sys.argv[1:]
            folder, quoted = _check_output_dirs(args, config_name)
            taken = False
            if folder is not None and not {"-m", "--multirun"} & set(args):
                try:  # before Hydra writes its .hydra/ and log file into a directory another run is using
                    taken = lock_run_dir(folder, f"hysquant-{config_name}")
                except HySquantError as e:
                    report(str(e))
                    sys.exit(2)
            argv = sys.argv
            given[:] = [argv]
            sys.argv = [argv[0], *quoted]  # what Hydra parses: run directories quoted for its grammar
            try:
                result = run()
            finally:
                sys.argv = argv
                given.clear()
                if taken:
                    unlock_run_dir(folder)
            if failed:
                print(f"{len(failed)} job(s) of the sweep failed: {', '.join(failed)}", file=sys.stderr)
                sys.exit(min(len(failed), 125))
            return result

        return main

    return deco


def os_error_message(e: OSError) -> str:
    """One line for an ``OSError`` that reached an app. A write that failed (:class:`WriteError`, a full disk, a
    file too large, a read-only file system) says so; anything else names the file and the cause without calling it
    a write (data and weights that cannot be read are reported where they are read, as ``cannot read ...``)."""
    where = f" {e.filename}" if e.filename else ""
    cause = e.strerror or str(e) or type(e).__name__
    if isinstance(e, WriteError) or e.errno in WRITE_ERRNOS:
        return f"cannot write{where} ({cause}): make it writable or free disk space"
    return f"cannot access{where} ({cause}): check that it exists and that this user may read (or write) it"


def lock_run_dir(folder: Path, app: str) -> bool:
    """Take the run directory ``folder`` for this process: an exclusive, non-blocking ``fcntl.flock`` on
    ``folder/.hysquant.lock``, which then holds ``app`` and this PID. The kernel releases it when the process ends
    (exit, Ctrl-C, kill -9). Returns True when taken now, False when this process holds it already. Raises
    :class:`HySquantError` naming the holder's PID when another process holds it."""
    key = folder.resolve()
    if key in _held:
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # never through a link or into a hard link's other name: the note below truncates and writes the file
        fd = open_in_place(
            folder / LOCK_FILE, "remove it (a run directory's lock is an ordinary file), or pass another hydra.run.dir"
        )
    except OSError as e:
        raise HySquantError(
            f"cannot write the run directory {folder} ({e.strerror or e}): choose a directory that can be written"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        raise HySquantError(
            f"{holder or 'another process'} is running in {folder}: wait for it to end, or pass another"
            " hydra.run.dir (two runs in one directory would mix their files)"
        ) from None
    except OSError as e:  # a file system without flock (some network mounts): run, unguarded
        os.close(fd)
        log.warning("cannot lock %s (%s): a second run in this directory would not be refused", folder, e)
        return False
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{app} (PID {os.getpid()})\n".encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, its note is empty
        pass
    _held[key] = fd
    return True


def unlock_run_dir(folder: Path) -> None:
    """Release the run directory ``folder`` if this process holds it (closing the lock file drops the flock)."""
    fd = _held.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)


def _check_output_dirs(args: list[str], app: str) -> tuple[Path | None, list[str]]:
    """Create the run (or sweep) directory given on the command line now, so that one that cannot be written is
    one line, not the traceback of Hydra creating it; returns the run directory given (None: Hydra's default) and
    the arguments with each such value quoted for Hydra's override grammar (where ``; & | ( ) , # ~``, non-ASCII
    letters or a newline would be a parse error or a sweep), so that it names exactly the folder given. Refused in one
    line, before anything is created: a value that still carries quote characters or an unresolved ``${...}`` (it
    would make a folder of that literal name), a name that is not valid UTF-8 (no file Hydra writes could record it),
    and a directory whose Hydra files are links or not regular files (:func:`check_hydra_files`)."""
    given, quoted = None, []
    for arg in args:
        key, _, value = arg.partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or not value:
            quoted.append(arg)
            continue
        problem = ""
        if any(q in value for q in "'\"`"):
            problem = "carries quote characters, which would become part of the folder's name: pass it unquoted"
        elif "${" in value:
            problem = (
                "holds an unresolved interpolation, which would become a folder of that literal name: pass a"
                f" literal path (the shell can add the time: {key}=outputs/run_$(date +%Y-%m-%d_%H-%M-%S))"
            )
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problem = "is not valid UTF-8 (bytes of another encoding): rename the folder in UTF-8 or pass another"
        if problem:
            report(f"{key}={value!r} {problem}" if "\n" in value else f"{key}={value} {problem}")
            sys.exit(2)
        try:
            check_hydra_files(Path(value), app, sweep=key == "hydra.sweep.dir")
        except UnsafeFile as e:
            what = e.problem.split(",")[0]  # a symbolic link, a hard link (2 names ...), a FIFO (named pipe), ...
            report(f"{e.path} is {what}, which Hydra would write through: remove it, or pass another {key}")
            sys.exit(2)
        try:
            Path(value).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            report(f"cannot create {key}={value} ({e.strerror or e}): choose a directory that can be written")
            sys.exit(2)
        if key == "hydra.run.dir":
            given = Path(value)
        trailing = len(value) - len(value.rstrip("\\"))  # backslashes before the closing quote are doubled
        quoted.append(f"{key}='{value}{chr(92) * trailing}'")
    return given, quoted


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into <run dir>/.hydra/


def check_hydra_files(folder: Path, app: str, sweep: bool = False) -> None:
    """Raise :class:`UnsafeFile` where Hydra would write through a link in ``folder``: its ``.hydra/`` folder, the
    files it rewrites there, and the log it appends to (``<app>.log``); for a sweep directory its ``multirun.yaml`` and
    each job folder already there (``0/``, ``1/``, ...)."""
    if sweep:
        check_in_place(folder / "multirun.yaml")
        jobs = [p for p in folder.iterdir() if re.fullmatch(r"\d+", p.name)] if folder.is_dir() else []
        for job in jobs:
            check_in_place(job, folder=True)
            check_hydra_files(job, app)
        return
    check_in_place(folder / ".hydra", folder=True)
    for name in HYDRA_FILES:
        check_in_place(folder / ".hydra" / name)
    check_in_place(folder / f"{app}.log")


def report(message: str) -> None:
    """One ``error:`` line on stderr, and the same in the run's log file (not twice on the console). A message
    that spans lines (a library's text) is joined into one."""
    message = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: {message}", file=sys.stderr)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN
