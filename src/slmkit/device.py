"""Where models run: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

One spelling for every verb and config (``--device``, ``device:`` in a recipe),
checked once by :func:`check_device` and turned into a ``torch.device`` by
:func:`resolve_device`. ``auto`` is CUDA when PyTorch sees a GPU, else the CPU,
so nothing changes on a machine without one.
"""
from __future__ import annotations

import re
from typing import Annotated

import torch
from pydantic import AfterValidator

from .errors import SlmError

DEVICE_HELP = "auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(spec: str) -> str:
    """``spec`` normalised (lower case, no spaces), or SlmError naming ``--device``.

    Checks the spelling and, for ``cuda``/``cuda:N``, that such a GPU is visible, so a
    wrong device fails before any model is loaded.
    """
    s = str(spec).strip().lower()
    if not _SPEC.match(s):
        raise SlmError(f"--device '{spec}' is not a device", f"use {DEVICE_HELP}")
    if s.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise SlmError(f"--device {s}: PyTorch sees no CUDA GPU on this machine",
                           "use --device cpu (or auto), or install a CUDA build of PyTorch")
        index = int(s.split(":")[1]) if ":" in s else 0
        if index >= n:
            raise SlmError(f"--device {s}: this machine has {n} CUDA GPU(s)",
                           f"use cuda:0 to cuda:{n - 1}")
    return s


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for a device spec (``None`` and ``auto``: CUDA if present)."""
    if isinstance(spec, torch.device):
        return spec
    s = check_device(spec or "auto")
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(s)


def autocast_type(device: torch.device) -> str:
    """The ``device_type`` torch.autocast wants for tensors on ``device``."""
    return "cuda" if device.type == "cuda" else "cpu"


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's first parameter lives (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch dict with its tensors on ``device`` (the same dict when already there)."""
    if all(not isinstance(v, torch.Tensor) or v.device == device for v in batch.values()):
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


# A config field: ``device: Device = "auto"``; validated like the CLI option.
Device = Annotated[str, AfterValidator(check_device)]
