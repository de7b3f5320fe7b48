"""The ``slm`` command line.

One Typer app; each verb lives in its own module under ``slmkit.cli`` and is
registered by importing it (see ``VERBS``). User errors (``SlmError``) print
one line and exit with code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import importlib
import os
import sys

from .app import app, console, state

# Order here is the order in `slm --help`.
VERBS = ("models", "plan", "eval", "generate", "chat", "finetune", "augment", "prune",
         "distill", "synth", "quantize", "export", "serve", "build")


def _register() -> None:
    for verb in VERBS:
        try:
            importlib.import_module(f"slmkit.cli.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name != f"slmkit.cli.{verb}":
                raise


def _quiet_transformers() -> None:
    """transformers' own progress bars and warnings would clutter slmkit's output."""
    import warnings
    warnings.filterwarnings("ignore")
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``slm``."""
    from ..errors import SlmError
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _quiet_transformers()
    _register()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        state["debug"] = True
    try:
        app(args=argv, prog_name="slm")       # standalone: usage errors exit 2
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
