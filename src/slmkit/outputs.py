"""What a command may write, and how: the output guard and atomic writes.

Every verb that writes checks its output once, before any work, with
:func:`check_output`: an existing output needs ``--force``, an output equal to
or inside an input (or holding one) is refused, a file flag wants a file name
with the right suffix and a directory flag a directory name, and only run
directories get their parents created. Library writers (``save``, ``run_prune``,
...) check ``overwrite`` with :func:`refuse_existing`, the one place that refuses
an existing output.

Writers put their bytes in a temporary sibling named by :func:`temp_path`
(``.NAME.tmp-PID``, the one naming scheme) and rename it into place with
:func:`atomic_path` / :func:`replace`. ``slm`` turns SIGTERM into an
ordinary exit, so a temporary file is removed by the writer's own cleanup on
Ctrl-C and on ``kill``; one left by a process that was killed outright
(SIGKILL, power loss) is removed by :func:`clean_stale` on the next run, which
:func:`check_output` calls.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
from pathlib import Path

from .errors import SlmError

# Suffixes that name a file: a directory output with one of them is a mistake.
FILE_SUFFIXES = (".gguf", ".jsonl", ".json", ".txt", ".md", ".safetensors", ".bin", ".yaml",
                 ".yml", ".csv", ".html")
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old|partial|f32)-(?P<pid>\d+)$")


def temp_path(out: str | os.PathLike, tag: str = "tmp") -> Path:
    """The temporary sibling a writer of ``out`` fills before renaming it into place."""
    out = Path(out)
    return out.with_name(f".{out.name}.{tag}-{os.getpid()}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(out: str | os.PathLike) -> list[Path]:
    """Temporaries of ``out`` (files or directories) whose writing process is gone."""
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        return []
    found = []
    for p in parent.iterdir():
        m = _TEMP.match(p.name)
        if m and m["name"] == out.name and not _alive(int(m["pid"])):
            found.append(p)
    return sorted(found)


def clean_stale_in(directory: str | os.PathLike) -> list[Path]:
    """Remove every temporary a killed process left in ``directory``."""
    d = Path(directory)
    found = []
    if d.is_dir():
        for p in d.iterdir():
            m = _TEMP.match(p.name)
            if m and not _alive(int(m["pid"])):
                found.append(p)
                remove(p)
    return found


def clean_stale(out: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed run left next to ``out``; returns what it removed."""
    removed = stale_temps(out)
    for p in removed:
        remove(p)
    return removed


def remove(path: Path) -> None:
    """Delete a file or a directory tree, whichever ``path`` is; no error if absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike, tag: str = "tmp"):
    """Yield a temporary path for ``out``; on success rename it over ``out``, else remove it.

    The caller creates a file or a directory at the yielded path. An existing ``out``
    is replaced only once the new one is complete.
    """
    out = Path(out)
    tmp = temp_path(out, tag)
    remove(tmp)
    try:
        yield tmp
        replace(tmp, out)
    finally:
        remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replace(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``, replacing an old file or directory there."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_dir() and not dst.is_symlink():
        old = temp_path(dst, "old")
        os.replace(dst, old)
        os.replace(src, dst)
        remove(old)
    else:
        os.replace(src, dst)


def disk_full(exc: BaseException) -> bool:
    """True for the errors a full disk (or quota) raises."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# ---------------------------------------------------------------- the output guard

def refuse_existing(out: str | os.PathLike, force: bool = False, option: str | None = None
                    ) -> None:
    """The one existing-output guard: an output that exists needs ``force`` (``--force``).

    :func:`check_output` calls it for the CLI; every library writer (``run_prune``,
    ``save``, ...) calls it with its ``overwrite`` argument.

    Raises:
        SlmError: naming ``option`` (or the path alone, for a library call).
    """
    path = Path(str(out)).expanduser()
    if force or not (path.exists() or path.is_symlink()):
        return
    flag = option or "--out"
    raise SlmError(f"{option + ' ' if option else ''}{out} already exists",
                   f"choose another {flag} or pass --force to replace it")


def _local(spec) -> Path | None:
    """The resolved path of an input that is a local file or directory, else None."""
    if spec is None:
        return None
    p = Path(str(spec)).expanduser()
    return p.resolve() if p.exists() else None


def check_output(out: str | os.PathLike, *, kind: str, force: bool = False,
                 inputs: dict[str, object] | None = None, suffixes: tuple[str, ...] = (),
                 option: str = "--out", make_parents: bool = False) -> Path:
    """Refuse an output that would destroy data or is not what the flag writes.

    Args:
        out: the output path the user gave.
        kind: ``"dir"`` (a model or run directory) or ``"file"``.
        force: the user passed ``--force``: an existing output of the right kind may go.
        inputs: the command's inputs by option name (``{"--data": "notes.md"}``); an output
            equal to one, inside one or holding one is refused, with or without --force.
        suffixes: for a file, the suffixes allowed (``(".jsonl",)``).
        option: the flag that named ``out``, for messages.
        make_parents: a run directory: its parent directories may be created. Otherwise the
            parent must exist.

    Returns:
        ``out`` as a Path. Stale temporaries of earlier killed runs are removed.

    Raises:
        SlmError: naming ``option`` and what to do instead.
    """
    try:
        return _check_output(out, kind, force, inputs or {}, suffixes, option, make_parents)
    except OSError as exc:                       # a name too long, a loop of links, ...
        raise SlmError(f"{option} {out}: {exc.strerror or exc}", f"choose another {option}") \
            from None


def _check_output(out, kind, force, inputs, suffixes, option, make_parents) -> Path:
    path = Path(str(out)).expanduser()
    if not str(out).strip():
        raise SlmError(f"{option} is empty", f"give {option} a path")
    if kind == "dir" and path.suffix.lower() in FILE_SUFFIXES:
        raise SlmError(f"{option} {out} looks like a file name, but this writes a directory",
                       f"give {option} a directory name without '{path.suffix}'")
    if kind == "file" and suffixes and path.suffix.lower() not in suffixes:
        raise SlmError(f"{option} {out} must end in {' or '.join(suffixes)}",
                       f"e.g. {option} {path.with_suffix(suffixes[0]).name}")
    check_not_input(path, inputs, option)
    if path.exists() or path.is_symlink():
        if kind == "dir" and not path.is_dir():
            raise SlmError(f"{option} {out} is an existing file, not a directory",
                           f"choose another {option}")
        if kind == "file" and path.is_dir():
            raise SlmError(f"{option} {out} is an existing directory, not a file",
                           f"choose another {option}")
        refuse_existing(path, force, option)
    parent = path.parent
    if not make_parents and not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise SlmError(f"{option} {out}: the directory {parent} {what}",
                       f"create it first or choose another {option}")
    if parent.is_dir() and not os.access(parent, os.W_OK):
        raise SlmError(f"{option} {out}: the directory {parent} is not writable",
                       f"choose another {option}")
    clean_stale(path)
    return path


def check_not_input(path: Path, inputs: dict[str, object], option: str) -> None:
    """Refuse an output ``path`` that is, is inside, or holds one of ``inputs``."""
    target = path.resolve()
    for name, spec in inputs.items():
        src = _local(spec)
        if src is None:
            continue
        if target == src:
            raise SlmError(f"{option} {path} is the same path as {name}; writing it would "
                           "destroy the input", f"choose another {option}")
        if src in target.parents:
            raise SlmError(f"{option} {path} is inside {name} {spec}", f"write it outside "
                           f"the input, choose another {option}")
        if target in src.parents:
            raise SlmError(f"{option} {path} holds {name} {spec}; replacing it would destroy "
                           "the input", f"choose another {option}")


# ---------------------------------------------------------------- signals

def _terminated(signum, _frame):
    raise SystemExit(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """Let SIGTERM (``kill``, a scheduler stopping the job) unwind like Ctrl-C does, so
    every writer's cleanup runs and no temporary file is left behind."""
    with contextlib.suppress(ValueError):          # not in the main thread
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _terminated)
