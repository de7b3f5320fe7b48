"""slm models: the catalog."""
from __future__ import annotations

import typer
from rich.table import Table

from ..models.catalog import CATALOG
from .app import app, console, print_json


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


@app.command("models")
def models_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """List the model families slmkit knows, with sizes and memory needs.

    Memory is for the weights alone (add KV cache and activations; see `slm plan`),
    from the exact parameter count at fp16, int8 (8.5 bits/weight) and int4 (4.5).

    Example: slm models --json
    """
    rows = []
    for e in CATALOG.values():
        rows.append({
            "name": e.name, "family": e.family, "hub_id": e.hub_id,
            "architecture": e.architecture, "params": e.params,
            "active_params": e.active_params, "context_length": e.context_length,
            "licence": e.licence,
            "weights_bytes": {k: e.weight_bytes(k) for k in ("fp16", "int8", "int4")},
            "available": e.available(), "builtin_package": e.builtin,
        })
    if json_out:
        print_json(rows)
        return
    t = Table(title="slmkit model catalog (weights memory in GB)")
    for col in ("name", "params", "active", "arch", "context", "fp16", "int8", "int4",
                "licence", "here"):
        t.add_column(col, justify="right" if col in ("params", "active", "context", "fp16",
                                                      "int8", "int4") else "left")
    for r in rows:
        w = r["weights_bytes"]
        t.add_row(r["name"], f"{r['params'] / 1e9:.2f}B", f"{r['active_params'] / 1e9:.2f}B",
                  r["architecture"], str(r["context_length"]), _gb(w["fp16"]), _gb(w["int8"]),
                  _gb(w["int4"]), r["licence"], "yes" if r["available"] else "-")
    console.print(t)
    console.print("here = weights on this machine (built-in package or HF cache). "
                  "Load any with `slmkit.load(NAME)`.")
