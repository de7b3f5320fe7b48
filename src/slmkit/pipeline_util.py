"""Turning option values into validated configs, with errors that name the user's option.

A config class declares its ranges once (pydantic ``Field(gt=..., lt=...)`` and
validators). The same class serves a recipe step and a CLI verb, so an error
must name what the user wrote: ``--sparsity`` on the command line, ``sparsity``
in a recipe. Validators that concern several fields raise :class:`OptionError`
with ``{field}`` placeholders, which are filled in with the right spelling.
"""
from __future__ import annotations

import re
from typing import Callable

from pydantic import BaseModel, ValidationError

from .errors import SlmError

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class OptionError(ValueError):
    """A config validator's complaint about ``field``; ``{name}`` in the message is a field
    name, shown as the user wrote it (``--n`` on the command line, ``n_per_prompt`` in a
    recipe).

    Args:
        field: the field to blame (the message's subject).
        message: what is wrong, with ``{field}`` placeholders.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(self.render(lambda f: f))

    def render(self, name: Callable[[str], str]) -> str:
        return _PLACEHOLDER.sub(lambda m: name(m[1]), self.message)


def cli_flags() -> dict[str, str]:
    """Parameter name -> its long flag, for the command now running (empty outside one)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:                                    # pragma: no cover
        return {}
    ctx = get_current_context(silent=True)
    if ctx is None:
        return {}
    flags = {}
    for p in ctx.command.params:
        longs = [o for o in p.opts if o.startswith("--")]
        flags[p.name] = longs[0] if longs else p.name.upper()
    return flags


def spell(field: str) -> str:
    """``field`` as the user wrote it: the running command's flag for it (``--vocab-size``),
    else the field name itself (a recipe, a library call)."""
    return cli_flags().get(field, field)


def help_hint() -> str:
    """'see `slm VERB --help`' for the command now running."""
    try:
        from typer._click.globals import get_current_context
        ctx = get_current_context(silent=True)
    except ImportError:                                    # pragma: no cover
        ctx = None
    return f"see `{ctx.command_path} --help`" if ctx is not None else "see --help"


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


def error_text(err: dict, name: Callable[[str], str]) -> tuple[str | None, str]:
    """(the field to blame, the message) of one pydantic error, placeholders filled in."""
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, OptionError):
        return cause.field, cause.render(name)
    field = ".".join(str(p) for p in err["loc"]) or None
    return field, err["msg"].removeprefix("Value error, ")


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
