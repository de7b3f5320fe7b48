"""Turning option values into validated configs, with errors that name the user's option.

A config class declares its ranges once (pydantic ``Field(gt=..., lt=...)`` and
validators). The same class serves a recipe step and a CLI verb, so an error
must name what the user wrote: ``--sparsity`` on the command line, ``sparsity``
in a recipe. Validators that concern several fields raise
:class:`slmkit.errors.OptionError` with ``{field}`` placeholders, which are filled
in with the right spelling.
"""
from __future__ import annotations

from typing import Callable

from pydantic import BaseModel, ValidationError

from ..errors import SlmError, cli_flags, error_text, help_hint


def config_from_options(cls: type[BaseModel], where: str = "option",
                        flags: dict[str, str] | None = None, **values) -> BaseModel:
    """``cls(**values)``, with a validation error turned into a one-line SlmError.

    Args:
        cls: a pydantic config class.
        where: how to name the source in the message ("option", "recipe step 'prune'").
        flags: field -> the option that sets it, where their names differ
            (``{"n_per_prompt": "--n"}``); other fields are found among the running
            command's options by name.
    """
    try:
        return cls(**values)
    except ValidationError as exc:
        raise validation_error(exc, where, flags) from exc


def flag_namer(flags: dict[str, str] | None = None) -> Callable[[str], str]:
    """field -> the user's spelling of it on the command line."""
    known = cli_flags()
    extra = flags or {}

    def name(field: str) -> str:
        if field in extra:
            return extra[field]
        if field in known:
            return known[field]
        return "--" + field.replace("_", "-")
    return name


def validation_error(exc: ValidationError, where: str = "option",
                     flags: dict[str, str] | None = None) -> SlmError:
    err = exc.errors()[0]
    if where != "option":
        field, msg = error_text(err, lambda f: f)
        return SlmError(f"invalid {where} '{field or 'options'}': {msg}",
                        "see --help for allowed values")
    name = flag_namer(flags)
    field, msg = error_text(err, name)
    top = field.split(".")[0] if field else None
    if top is None or name(top) in msg:
        return SlmError(msg, help_hint())
    return SlmError(f"{name(top)}: {msg}", help_hint())
