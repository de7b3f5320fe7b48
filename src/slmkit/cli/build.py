"""slm build: run a recipe from a general model to a deployed domain model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .app import DeviceOpt, app, console, print_json


def _list_recipes(json_out: bool) -> None:
    from ..pipeline.recipe import load_recipe, shipped
    rows = []
    for name, path in shipped().items():
        r = load_recipe(path, check_files=False)
        rows.append({"name": name, "description": r.description, "base": r.base, "data": r.data,
                     "steps": [s.name for s in r.steps], "quick": r.quick, "path": str(path)})
    if json_out:
        print_json(rows)
        return
    t = Table(title="shipped recipes (slm build NAME)")
    for col in ("name", "base", "steps", "description"):
        t.add_column(col)
    for r in rows:
        desc = r["description"] + (f" (--quick: recipe '{r['quick']}')" if r["quick"] else "")
        t.add_row(r["name"], r["base"], " > ".join(r["steps"]), desc)
    console.print(t)


def _choose(recipe: str | None, quick: bool):
    """The recipe to run: the named one, or its quick variant with --quick."""
    from ..errors import SlmError
    from ..pipeline.recipe import load_recipe
    r = load_recipe(recipe or "default")
    if not quick:
        return r
    if not r.quick:
        raise SlmError(f"recipe '{r.name}' has no quick variant",
                       "add `quick: OTHER_RECIPE` to it, or run without --quick")
    path = Path(r.source).parent / f"{r.quick}.yaml" if r.source else None
    return load_recipe(path if path and path.exists() else r.quick)


@app.command("build")
def build_cmd(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file or shipped recipe name (default: 'default')."),
    quick: bool = typer.Option(False, "--quick", help="Run the recipe's 5-minute variant."),
    list_: bool = typer.Option(False, "--list", help="List the shipped recipes and exit."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe name>)."),
    force: bool = typer.Option(False, "--force", help="Start from scratch: delete the run directory first."),
    check: bool = typer.Option(False, "--check", help="Only validate the recipe."),
    device: str = DeviceOpt,
    json_out: bool = typer.Option(False, "--json", help="Print the build report as JSON at the end."),
):
    """Build a domain model from a recipe: finetune, prune, distill, quantize, export, eval.

    Each step writes runs/<name>/NN-<step>/; re-running skips unchanged steps and resumes
    an interrupted one from its checkpoint. Ends with report.html, report.json and a table.

    Example: slm build --quick
    """
    from ..pipeline.build import Build
    if list_:
        _list_recipes(json_out)
        return
    r = _choose(recipe, quick)
    if check:
        console.print(f"recipe '{r.name}' ({r.source}) is valid: "
                      f"{' > '.join(s.name for s in r.steps)}", highlight=False)
        return
    report = Build(r, out, force=force, console=console,
                   device=None if device == "auto" else device).run()
    if json_out:
        print_json(report)
