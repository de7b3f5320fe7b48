"""Step verbs built from their config classes: one option per config field.

``slm finetune``, ``distill``, ``prune``, ``quantize`` and ``export`` take their
options from the fields of the step's config class (name, type, default and
help), so a default is written once, in the config, and every field can be set
from the command line. What the command line spells differently (a short flag,
an older name such as ``--warmup`` for ``warmup_steps``, an inverted switch such
as ``--fp32-hidden`` for ``bf16_base``, a parser for ``0:1,1:3``) is declared
per verb in one table of :class:`Flag` entries, next to the verb.

:func:`step_command` registers the verb: the verb's own options (the model, ``--out``,
``--json``, ...) are written as usual; the body receives the config's values as a
dict, keyed by field (nested config models are flattened: their fields are
options, their values arrive as a nested dict).
"""
from __future__ import annotations

import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ..data import with_text_field
from ..pipeline.steps import STEPS
from .app import _device, app


DEVICE_HELP = ("Where PyTorch models run: auto (CUDA when a GPU is visible, else the CPU), "
               "cpu, cuda or cuda:N.")


@dataclass(frozen=True)
class Flag:
    """How one config field shows on the command line, where it differs from the default
    (``--field-name``, the field's type, default and description).

    Attributes:
        names: the option's flags, e.g. ``("--data", "-d")``; a bool field with a True
            default gets ``--x/--no-x`` unless names say otherwise.
        help: help text worded for the command line (default: the field's description).
        parser: turns the command-line string into the field's value (the option is then
            a string).
        invert: the flag sets the field to False (``--no-bf16`` for ``bf16``).
        hidden: not shown in ``--help`` (still accepted).
        min: the smallest value the option accepts (checked as it is parsed).
    """

    names: tuple[str, ...] = ()
    help: str | None = None
    parser: Callable[[str], Any] | None = None
    invert: bool = False
    hidden: bool = False
    min: float | None = None


def field_default(info) -> Any:
    """A pydantic field's default (``...`` when it is required)."""
    if info.default_factory is not None:
        return info.default_factory()
    return ... if info.default is PydanticUndefined else info.default


def _attribute_docs(cls) -> dict[str, str]:
    """``name: text`` entries of a class docstring's ``Attributes:`` section."""
    doc = inspect.getdoc(cls) or ""
    out, name = {}, None
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    for line in section.splitlines():
        m = re.match(r"^    ([a-z_][a-z0-9_, ]*): (.*)$", line)
        if m:
            names, text = [n.strip() for n in m[1].split(",")], m[2]
            for n in names:
                out[n] = text
            name = names
        elif line.startswith("        ") and name:
            for n in name:
                out[n] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return out


def _cli_type(annotation) -> tuple[Any, Callable[[Any], Any] | None]:
    """The option type for a field type, and a converter to the field's value (or None)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner, conv = _cli_type(rest[0]) if len(rest) == 1 else (str, _scalar)
        return Optional[inner], conv
    if origin is typing.Annotated:
        return _cli_type(args[0])
    if origin is Literal:
        return type(args[0]), None
    if annotation in (bool, int, float, str):
        return annotation, None
    if origin is list and args and args[0] is str:
        return str, _comma_list
    return str, _json_value


def _scalar(text):
    """A value that may be a number or a string (``0.7``, ``90M``)."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text


def _comma_list(text):
    return None if text is None else [t.strip() for t in str(text).split(",") if t.strip()]


def _json_value(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _help(name: str, info, flag: Flag, docs: dict[str, str], annotation) -> str:
    if flag.help:                                   # worded for the command line already
        return flag.help
    if name == "device":
        return DEVICE_HELP
    text = info.description or docs.get(name, "")
    text = text[:1].upper() + text[1:] if text else ""
    if typing.get_origin(annotation) is Literal:
        choices = ", ".join(str(a) for a in typing.get_args(annotation))
        text = f"{text.rstrip('.')}{'. ' if text else ''}One of: {choices}."
    return text


def config_fields(cls: type[BaseModel], prefix: tuple = ()) -> dict[str, tuple]:
    """Field name -> (path in the config, field info, owning class), nested models flattened."""
    out = {}
    for name, info in cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(config_fields(ann, prefix + (name,)))
        else:
            out[name] = (prefix + (name,), info, cls)
    return out


def field_params(cls: type[BaseModel], flags: dict[str, Flag]) -> tuple[list, dict]:
    """One ``inspect.Parameter`` (a typer Option) per config field, and each one's converter."""
    params, converters = [], {}
    docs: dict[type, dict] = {}
    for name, (path, info, owner) in config_fields(cls).items():
        flag = flags.get(name, Flag())
        docs.setdefault(owner, _attribute_docs(owner))
        cli_type, conv = _cli_type(info.annotation)
        default = field_default(info)
        if flag.parser is not None:
            cli_type, conv = Optional[str], None
        names = flag.names or (f"--{name.replace('_', '-')}",)
        if cli_type is bool and default is True and not flag.invert and "/" not in names[0]:
            names = (f"{names[0]}/--no-{names[0][2:]}",) + names[1:]
        if cli_type is Optional[bool] and "/" not in names[0]:
            names = (f"{names[0]}/--no-{names[0][2:]}",) + names[1:]
        shown = (not default) if flag.invert else default
        extra = {"parser": flag.parser} if flag.parser is not None else {}
        if flag.min is not None:
            extra["min"] = flag.min
        if name == "device":
            extra["callback"] = _device
        option = typer.Option(shown, *names, help=_help(name, info, flag, docs[owner],
                                                        info.annotation),
                              hidden=flag.hidden, show_default=default is not None, **extra)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=cli_type))
        converters[name] = (path, conv, flag.invert)
    return params, converters


def step_command(verb: str, cls: type[BaseModel], *, flags: dict[str, Flag],
                 head: list[inspect.Parameter], tail: list[inspect.Parameter]):
    """Register ``slm VERB``: ``head`` options, then one per field of ``cls``, then ``tail``.

    The decorated body is called as ``body(values, **verb_options)`` where ``values`` is
    the config's values by field (nested as the config nests them), ready for ``cls``.
    """
    fields, converters = field_params(cls, flags)
    params = head + fields + tail

    def register(body):
        def command(**kwargs):
            values: dict = {}
            for name, (path, conv, invert) in converters.items():
                value = kwargs.pop(name)
                value = (not value) if invert else value
                value = conv(value) if conv is not None and value is not None else value
                node = values
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                node[path[-1]] = value
            return body(values, **kwargs)
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__ = body.__doc__
        command.__name__ = command.__qualname__ = body.__name__
        command.__module__ = body.__module__
        app.command(verb)(command)
        return body
    return register


def param(name: str, annotation, default) -> inspect.Parameter:
    """A verb's own option (not a config field) for ``head`` / ``tail``."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


def flag_names(flags: dict[str, Flag]) -> dict[str, str]:
    """Field -> its long flag where the table renames it (for error messages)."""
    return {name: f.names[0].split("/")[0] for name, f in flags.items() if f.names}


def with_text_fields(verb: str, values: dict, text_field: str | None) -> dict:
    """``values`` with ``--text-field`` applied to every field of the step that names data
    (the registry's :attr:`StepKind.data <slmkit.pipeline.steps.StepKind>`)."""
    out = dict(values)
    for name in STEPS[verb].data:
        if isinstance(out.get(name), str):
            out[name] = with_text_field(out[name], text_field)
    return out
