"""slm build: run a recipe from a general model to a deployed domain model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..data import data_exists
from ..data.corpora import CORPORA
from ..errors import SlmError
from ..outputs import check_not_input
from ..pipeline.recipe import RECIPES_DIR, load_recipe, resolve_path, shipped
from .app import DeviceOpt, TEXT_FIELD, app, console, print_json


def _list_recipes(json_out: bool) -> None:
    rows = []
    for name, path in shipped().items():
        r = load_recipe(path, check_files=False)
        rows.append({"name": name, "description": r.description, "base": r.base, "data": r.data,
                     "steps": [s.name for s in r.steps], "quick": r.quick, "path": str(path)})
    if json_out:
        print_json(rows)
        return
    console.print(f"shipped recipes, in {RECIPES_DIR} (`slm build --show NAME` prints one, "
                  "`slm build --init NAME` copies one to edit):", highlight=False, soft_wrap=True)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        first = r["description"].split(". ")[0].rstrip(".")
        console.print(f"  [bold]{r['name']:<{width}}[/]  {r['base']} on {r['data']}: {first}",
                      highlight=False, soft_wrap=True, emoji=False)


def _choose(recipe: str | None, quick: bool, overrides: dict):
    """The recipe to run: the named one, or its quick variant with --quick."""
    r = load_recipe(recipe or "default", overrides=overrides)
    if not quick:
        return r
    if not r.quick:
        raise SlmError(f"recipe '{r.name}' has no quick variant",
                       "add `quick: OTHER_RECIPE` to it, or run without --quick")
    path = Path(r.source).parent / f"{r.quick}.yaml" if r.source else None
    return load_recipe(path if path and path.exists() else r.quick, overrides=overrides)


def _check_data(option: str, value: str | None) -> None:
    """A data option must name a corpus, file or directory (checked before any work)."""
    if value is not None and not data_exists(value):
        raise SlmError(f"{option} '{value}' not found",
                       f"pass a file, a directory of files or a built-in corpus "
                       f"({', '.join(CORPORA)})")


def _show(recipe: str | None, quick: bool) -> None:
    path = resolve_path(recipe or "default")
    if quick:
        r = _choose(recipe, True, {})
        path = Path(r.source)
    typer.echo(f"# {path}\n" + path.read_text(), nl=False)


def _init(name: str, recipe: str | None, force: bool) -> None:
    """Write an editable copy of a recipe as NAME.yaml in the working directory."""
    import re

    dest = Path(name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    stem = dest.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stem):
        raise SlmError(f"--init '{name}': a recipe name is letters, digits, '.', '_' and '-'",
                       "e.g. --init my-docs")
    if dest.exists() and not force:
        raise SlmError(f"{dest} already exists", "choose another name, or add --force")
    src = resolve_path(recipe or "default")
    text, n = re.subn(r"(?m)^name:.*$", f"name: {stem}", src.read_text(), count=1)
    text = re.sub(r"(?m)^quick:.*\n", "", text)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text if n else f"name: {stem}\n{text}")
    load_recipe(dest)                                  # the copy must load as it is
    console.print(f"wrote {dest} (a copy of {src}); edit it, then run "
                  f"[bold]slm build {dest}[/]", highlight=False)


@app.command("build")
def build_cmd(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file or shipped recipe name (default: 'default')."),
    base: Optional[str] = typer.Option(None, "--base", "-b", help="Base model instead of the recipe's: built-in name, HF directory, .gguf file or tiny:FAMILY."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Domain data instead of the recipe's: a file, a directory of files (.txt .md .rst .html .jsonl .csv .parquet) or a built-in corpus."),
    general_data: Optional[str] = typer.Option(None, "--general-data", help="General text whose perplexity shows what the model lost (default: the recipe's, wordnet-glosses)."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out text the eval step scores, all of it (default: the validation split of --data)."),
    text_field: Optional[str] = TEXT_FIELD,
    quick: bool = typer.Option(False, "--quick", help="Run the recipe's 5-minute variant."),
    list_: bool = typer.Option(False, "--list", help="List the shipped recipes and where they are, and exit."),
    show: bool = typer.Option(False, "--show", help="Print the recipe's YAML and exit."),
    init: Optional[str] = typer.Option(None, "--init", help="Write an editable copy of the recipe as NAME.yaml here, and exit."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe name>)."),
    force: bool = typer.Option(False, "--force", help="Start from scratch: delete the run directory first (with --init: replace the file)."),
    check: bool = typer.Option(False, "--check", help="Only validate the recipe and resolve its figures against the base and the data."),
    device: str = DeviceOpt,
    json_out: bool = typer.Option(False, "--json", help="Print the build report as JSON at the end."),
):
    """Build a domain model from a recipe: finetune, prune, distill, quantize, export, eval.

    --base, --data, --general-data, --eval-data and --text-field replace the recipe's
    values, so `slm build --data ./our-docs` adapts the default recipe to your files.
    Budgets written relative to the base and the data (token shares, sequence lengths,
    the vocabulary covering the domain, the share of decoder parameters to keep) are
    resolved and printed before the first step. Each step writes runs/<name>/NN-<step>/;
    re-running skips unchanged steps and resumes an interrupted one from its checkpoint.
    Ends with report.html, report.json and a table.

    Example: slm build --data ./our-docs --base gemma3-270m --quick

    Example: slm build --init my-recipe  (then edit my-recipe.yaml and run slm build my-recipe.yaml)
    """
    from ..pipeline.build import Build
    if list_:
        _list_recipes(json_out)
        return
    if show:
        _show(recipe, quick)
        return
    if init:
        _init(init, recipe, force)
        return
    for option, value in (("--data", data), ("--general-data", general_data),
                          ("--eval-data", eval_data)):
        _check_data(option, value)
    overrides = {"base": base, "data": data, "general_data": general_data,
                 "eval_data": eval_data, "text_field": text_field}
    r = _choose(recipe, quick, overrides)
    build = Build(r, out, force=force, console=console,
                  device=None if device == "auto" else device)
    if check:
        sizing = build.resolve()
        console.print(f"recipe '{r.name}' ({r.source}) is valid: "
                      f"{' > '.join(s.name for s in r.steps)}", highlight=False)
        if json_out:
            print_json(sizing)
        return
    check_not_input(build.out, {"base": r.base, "data": r.data, "general_data": r.general_data,
                                "recipe": r.source}, "--out")
    report = build.run()
    if json_out:
        print_json(report)
