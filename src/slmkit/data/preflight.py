"""Check data a command names before any work: it exists, reads, and holds text."""
from __future__ import annotations

from pathlib import Path

from ..errors import SlmError
from . import read_records
from .corpora import CORPORA


def check_data(spec, option: str = "--data") -> None:
    """Raise SlmError (naming ``option``) unless ``spec`` is a built-in corpus or readable
    data with some text in it.

    Files are read in full (as the command will read them) so a bad JSONL line or an
    empty file is reported now rather than after a model has loaded.
    """
    s = str(spec)
    if s in CORPORA:
        return
    if not s.strip():
        raise SlmError(f"{option} is empty", f"give {option} a file, a directory or a built-in "
                       f"corpus: {', '.join(CORPORA)}")
    try:
        path = Path(s).expanduser()
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise SlmError(f"{option} {s} is not a regular file or directory", "check the path")
        read_records(s)
    except SlmError as exc:
        what = exc.what if exc.what.startswith(s) or s in exc.what else f"{s}: {exc.what}"
        raise SlmError(f"{option}: {what}", exc.fix) from None
    except UnicodeDecodeError as exc:
        raise SlmError(f"{option} {s} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                       "convert it to UTF-8") from None
    except OSError as exc:
        raise SlmError(f"{option} {s} cannot be read ({exc.strerror})", "check the path") \
            from None
