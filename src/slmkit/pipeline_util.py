"""Turning option values into validated configs, with errors that name the field."""
from __future__ import annotations

from pydantic import BaseModel, ValidationError

from .errors import SlmError


def config_from_options(cls: type[BaseModel], where: str = "option", **values) -> BaseModel:
    """``cls(**values)``, with a validation error turned into a one-line SlmError.

    Args:
        cls: a pydantic config class.
        where: how to name the source in the message ("option", "recipe step 'prune'").
    """
    try:
        return cls(**values)
    except ValidationError as exc:
        raise validation_error(exc, where) from exc


def validation_error(exc: ValidationError, where: str = "option") -> SlmError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "value"
    msg = err["msg"].removeprefix("Value error, ")
    return SlmError(f"invalid {where} '{field.replace('_', '-') if where == 'option' else field}': {msg}",
                    "see --help for allowed values")
