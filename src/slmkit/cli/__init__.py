"""The ``slm`` command line.

One Typer app; each verb lives in its own module under ``slmkit.cli`` and is
registered by importing it (see ``VERBS``). User errors (``SlmError``) print
one line and exit with code 2, and so do usage errors (an unknown option, a
value out of its range): ``error: --top: must be at least 1. See `slm plan --help`.``
``--debug`` shows the traceback.
"""
from __future__ import annotations

import importlib
import os
import sys

from ..errors import SlmError
from ..outputs import exit_cleanly_on_sigterm
from .app import app, console, state

# Order here is the order in `slm --help`.
VERBS = ("models", "plan", "eval", "generate", "chat", "finetune", "augment", "prune",
         "distill", "synth", "quantize", "export", "serve", "build")


def _register() -> None:
    """Import every verb module (each registers its command); a verb whose module fails
    to import fails the command line instead of going missing from it."""
    for verb in VERBS:
        importlib.import_module(f"slmkit.cli.{verb}")


def _quiet_transformers() -> None:
    """transformers' own progress bars and warnings would clutter slmkit's output."""
    import warnings
    warnings.filterwarnings("ignore")
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _usage_line(exc, argv: list[str]) -> str:
    """A click usage error as one line naming the option, with where to read more."""
    msg = exc.format_message().replace("Value error, ", "")
    param = getattr(exc, "param", None)
    if param is not None and getattr(exc, "param_hint", None) is None \
            and msg.startswith("Invalid value for"):
        longs = [o for o in param.opts if o.startswith("--")]
        flag = longs[0] if longs else (param.name or "value").upper()
        msg = f"{flag}: {msg.split(': ', 1)[-1]}"
    verb = next((a for a in argv if a in VERBS), None)
    where = f"slm {verb} --help" if verb else "slm --help"
    return f"{msg.rstrip('.')}. See `{where}`"


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``slm``."""
    from typer import Abort
    from typer._click.exceptions import ClickException

    exit_cleanly_on_sigterm()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _quiet_transformers()
    _register()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        state["debug"] = True
    try:
        code = app(args=argv, prog_name="slm", standalone_mode=False)
        if isinstance(code, int) and code:            # --help and the like return 0
            sys.exit(code)
    except ClickException as exc:
        if state["debug"]:
            raise
        if not exc.format_message():                  # no arguments: the help was shown
            sys.exit(exc.exit_code)
        console.print(f"[bold red]error:[/] {_usage_line(exc, argv)}", highlight=False,
                      soft_wrap=True)
        sys.exit(exc.exit_code)
    except Abort:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except SlmError as exc:
        if state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:
        if state["debug"]:
            raise
        first = f"{type(exc).__name__}: {exc}".splitlines()[0]
        console.print(f"[bold red]error:[/] {first}", highlight=False, soft_wrap=True)
        console.print("  (run again with --debug for the traceback)")
        sys.exit(1)
