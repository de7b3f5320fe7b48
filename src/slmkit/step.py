"""What every step's transform shares: its input, its output guard, its atomic write.

A step (see the registry in :mod:`slmkit.pipeline.steps`) is a transform
``run_x(model, out, cfg, *, overwrite=False) -> report``. Around the transform
itself each one does the same three things, here once:

- :func:`open_input`: the model to work on, a private copy when the caller passed
  a loaded ``SLM`` (the caller's model is never changed in place);
- :func:`slmkit.outputs.refuse_existing`: the one existing-output guard (called
  by :func:`write_outputs` too, so a library call cannot skip it);
- :func:`write_outputs`: model, ``report.json``, the model's history record
  (``slmkit.json``) and any extra files into one temporary directory, renamed into
  place (:func:`slmkit.outputs.atomic_path`): the output is complete or absent.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Callable

from .models.io import SLM, load, write_model
from .outputs import atomic_path, refuse_existing


def open_input(model, device: str = "auto") -> SLM:
    """The model a step transforms: ``model`` loaded, or a private copy of a loaded SLM."""
    if isinstance(model, SLM):
        return SLM(copy.deepcopy(model.model), model.tokenizer, model.spec, dict(model.meta),
                   model.path)
    return load(model, device=device)


def write_outputs(slm: SLM | None, out: str | os.PathLike, *, step: str, config: dict,
                  report: dict, history: dict | None = None, overwrite: bool = False,
                  files: dict[str, str] | None = None, dtype=None,
                  before_report: Callable[[Path], None] | None = None) -> Path:
    """Write a step's output directory atomically.

    Args:
        slm: the model to save (None: no model, e.g. an adapter only; ``before_report``
            writes what there is).
        out: the output directory.
        step: the step kind, recorded in the model's history.
        config: the step's resolved config (``cfg.model_dump()``), recorded in the history.
        report: the step's report, written as ``report.json`` (after ``before_report``).
        history: the report as the history records it (default: ``report``).
        overwrite: replace an existing ``out``.
        files: extra text files, by name.
        dtype: float dtype of the saved weights (default: the model's lineage's).
        before_report: called with the temporary directory once the model is in it (to
            add files, or figures such as its size to ``report``).

    Returns:
        ``out``.
    """
    out = Path(out)
    refuse_existing(out, overwrite)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        if slm is not None:
            record = {"step": step, "config": config,
                      "report": report if history is None else history}
            write_model(slm, tmp, step=record, dtype=dtype)
        if before_report is not None:
            before_report(tmp)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
    return out
