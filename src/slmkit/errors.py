"""One exception type for everything a user can get wrong, and how errors name options.

The CLI prints ``SlmError`` as a single line (``error: <what>. <fix>``) and
exits with code 2; ``--debug`` shows the traceback instead. A config validator
raises :class:`OptionError` with ``{field}`` placeholders; :func:`error_text` and
:func:`spell` fill them in as the user wrote the option (``--vocab-size`` on the
command line, ``vocab_size`` in a recipe or a library call).
"""
from __future__ import annotations

import re
from typing import Callable


class SlmError(Exception):
    """A problem with the user's input, with a hint on how to fix it.

    Args:
        what: what is wrong, naming the thing (file, field, model).
        fix: how to fix it; optional.
    """

    def __init__(self, what: str, fix: str | None = None):
        self.what = what.rstrip(".")
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.what}. {self.fix}" if self.fix else f"{self.what}."


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


def error_text(err: dict, name: Callable[[str], str]) -> tuple[str | None, str]:
    """(the field to blame, the message) of one pydantic error, placeholders filled in."""
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, OptionError):
        return cause.field, cause.render(name)
    field = ".".join(str(p) for p in err["loc"]) or None
    return field, err["msg"].removeprefix("Value error, ")
