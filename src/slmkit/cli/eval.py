"""slm eval: models side by side."""
from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from .app import DeviceOpt, app, console, print_json


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def eval_table(rows: list[dict], title: str = "slm eval") -> Table:
    """The side-by-side table of ``run_eval`` rows."""
    t = Table(title=title)
    cols = [("model", "model", str), ("engine", "engine", str),
            ("params", "params", _fmt_params), ("bytes", "size", _fmt_bytes),
            ("peak_rss", "peak RSS", _fmt_bytes), ("ppl", "ppl", "{:.3f}".format),
            ("ppl_general", "ppl general", "{:.3f}".format),
            ("tokens_per_char", "tokens/char", "{:.3f}".format),
            ("prefill_tok_s", "prefill tok/s", "{:.1f}".format),
            ("decode_tok_s", "decode tok/s", "{:.1f}".format), ("ttft_s", "TTFT s", "{:.3f}".format),
            ("mc_acc", "MC acc", "{:.3f}".format), ("mc_acc_norm", "MC acc_norm", "{:.3f}".format)]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    for _, head, _ in cols:
        t.add_column(head, justify="left" if head in ("model", "engine") else "right")
    for r in rows:
        t.add_row(*(fmt(r[k]) if k in r else "-" for k, _, fmt in cols))
    return t


@app.command("eval")
def eval_cmd(
    models: List[str] = typer.Argument(..., help="Models: built-in names, HF directories, .gguf files."),
    data: str = typer.Option("python-docs", "--data", "-d", help="Text for perplexity: corpus name, file or directory."),
    split: str = typer.Option("val", help="Which split of --data to score: val, train or all."),
    general_data: Optional[str] = typer.Option(None, "--general-data", help="Second text for perplexity (e.g. wordnet-glosses)."),
    task: Optional[str] = typer.Option(None, "--task", help="Multiple-choice JSONL of {question, choices, answer}."),
    engine: str = typer.Option("auto", help="auto (llama.cpp for .gguf, else pytorch), pytorch or llama.cpp."),
    max_length: int = typer.Option(512, help="Perplexity window length in tokens."),
    stride: int = typer.Option(256, help="Perplexity window stride in tokens."),
    max_eval_tokens: int = typer.Option(8192, help="Score at most this many tokens (0 = all)."),
    gen_tokens: int = typer.Option(64, help="Tokens to generate when timing decode."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Model whose tokenizer picks the text and counts its tokens; perplexity is then per reference token, so models with different vocabularies (e.g. after `slm prune --method vocab`) compare."),
    no_speed: bool = typer.Option(False, "--no-speed", help="Skip the speed measurement."),
    no_isolate: bool = typer.Option(False, "--no-isolate", help="Measure all models in this process (peak memory then accumulates)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter directory (`slm finetune` without --merge) applied to each model, unmerged; an adapter directory given as a model runs on the base it records."),
    device: str = DeviceOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Measure models side by side: size, memory, perplexity, speed, accuracy.

    Perplexity uses a sliding window (HF perplexity guide); decode speed is greedy
    generation of --gen-tokens after a 128-token prompt; peak RSS covers loading and
    generation. Each model runs in its own process.

    Example: slm eval smollm2-135m runs/demo/05-export/model.gguf --data python-docs --task my_quiz.jsonl

    Example: slm eval smollm2-135m runs/vocab8k --reference smollm2-135m
    """
    from ..evaluate import EvalConfig, run_eval
    from ..pipeline_util import config_from_options
    cfg = config_from_options(EvalConfig, data=data, split=split, general_data=general_data,
                              task=task, engine=engine, max_length=max_length, stride=stride,
                              max_eval_tokens=max_eval_tokens or None, gen_tokens=gen_tokens,
                              speed=not no_speed, isolate=not no_isolate, reference=reference, device=device, adapter=adapter)
    result = run_eval(models, cfg, progress=not json_out)
    if json_out:
        print_json(result)
    else:
        console.print(eval_table(result["models"]))
