"""slm augment: EDA copies of text data."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from ..data import with_text_field
from ..data.preflight import check_data
from ..outputs import check_output
from .app import TEXT_FIELD, app, console, print_json
from .validate import config_from_options


@app.command("augment")
def augment_cmd(
    data: str = typer.Argument(..., help="Data: .txt/.md/.jsonl file, directory or corpus name."),
    out: str = typer.Option(..., "--out", "-o", help="Output file: .jsonl (keeps all fields), .txt or .md."),
    method: str = typer.Option("eda", "--method", "-m", help="Augmentation method (eda)."),
    n: int = typer.Option(4, "--n", "-n", min=1, help="Augmented copies per record."),
    alpha: float = typer.Option(0.1, "--alpha", "-a", help="Fraction of words each copy changes."),
    ops: str = typer.Option("sr,ri,rs,rd", "--ops", help="EDA operations: sr (synonym), ri (insert), rs (swap), rd (delete)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same output)."),
    no_original: bool = typer.Option(False, "--no-original", help="Write only the augmented copies."),
    text_field: Optional[str] = TEXT_FIELD,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Make noisy copies of text records with EDA (synonyms, insertion, swap, deletion).

    Code spans, indented or fenced code, URLs and numbers are never changed; in
    JSONL only the text fields (text, prompt, response, message contents) change.

    Example: slm augment notes.jsonl --method eda --n 4 --alpha 0.1 --out notes-eda.jsonl --seed 1
    """
    from ..data.augment import AugmentConfig, run_augment
    cfg = config_from_options(AugmentConfig, flags={"keep_original": "--no-original"},
                              method=method, n=n, alpha=alpha,
                              ops=[o.strip() for o in ops.split(",") if o.strip()], seed=seed,
                              keep_original=not no_original)
    check_output(out, kind="file", force=force, suffixes=(".jsonl", ".txt", ".md"),
                 inputs={"DATA": data})
    check_data(with_text_field(data, text_field), "DATA")
    report = run_augment(with_text_field(data, text_field), out, cfg)
    if json_out:
        print_json(report)
        return
    t = Table(title=f"slm augment ({report['records_in']} -> {report['records_out']} records)")
    for col in ("operation", "copies", "words changed"):
        t.add_column(col, justify="left" if col == "operation" else "right")
    names = {"sr": "synonym replacement", "ri": "random insertion", "rs": "random swap",
             "rd": "random deletion"}
    for op in cfg.ops:
        t.add_row(names[op], str(report["copies"].get(op, 0)),
                  str(report["words_changed"].get(op, 0)))
    console.print(t)
    if report["unchanged_skipped"]:
        console.print(f"{report['unchanged_skipped']} copies skipped (nothing editable, e.g. code only)")
    console.print(f"saved to {out}")
