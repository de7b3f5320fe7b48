"""The Typer app every verb module registers on, and shared CLI helpers."""
from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

from ..device import check_device

app = typer.Typer(
    name="slm",
    help="Make your own small language model: select, compress, adapt, evaluate and deploy "
         "it on the hardware you have.\n\nAdd --debug to any command to see full tracebacks.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)
state = {"debug": False}


def print_json(obj) -> None:
    """Machine-readable output for --json: one JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.callback()
def _root() -> None:
    """Make your own small language model: select, compress, adapt, evaluate, deploy.

    Every verb has --help with an example. Add --debug to see full tracebacks.
    """


def _device(value: str) -> str:
    return check_device(value)


# Every verb that runs a model takes it; checked before any model is loaded.
DeviceOpt = typer.Option("auto", "--device", callback=_device,
                         help="Where PyTorch models run: auto (CUDA when a GPU is visible, "
                              "else the CPU), cpu, cuda or cuda:N.")


# One definition of the option every verb that reads data takes.
TEXT_FIELD = typer.Option(
    None, "--text-field",
    help="Column of .csv/.parquet files (key of .jsonl records) that holds the text "
         "(default: text).")
