"""slm synth: the teacher writes training text (sequence-level distillation)."""
from __future__ import annotations

from typing import Optional

import typer

from .. import units
from ..models.preflight import check_model
from ..outputs import check_output
from .app import DeviceOpt, app, console, print_json
from .validate import config_from_options


@app.command("synth")
def synth_cmd(
    teacher: str = typer.Option(..., "--teacher", "-T", help="Teacher model: built-in name, HF directory or .gguf."),
    prompts: str = typer.Option(..., "--prompts", "-p", help=".txt with one prompt/topic per line, or .jsonl with 'prompt'/'topic'."),
    out: str = typer.Option(..., "--out", "-o", help="Output JSONL file (prompt/response records)."),
    template: str = typer.Option("{prompt}", "--template", help="User message; {prompt} is replaced by each line."),
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    n: int = typer.Option(1, "--n", min=1, help="Replies per prompt (different seeds)."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Tokens per reply."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first reply (reply i uses seed + i)."),
    engine: str = typer.Option("auto", "--engine", help="auto, pytorch or llama.cpp."),
    min_chars: int = typer.Option(1, "--min-chars", help="Drop replies shorter than this."),
    device: str = DeviceOpt,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Let a teacher write replies to prompts or topics, as JSONL training data.

    The output's prompt/response records feed `slm finetune` (loss on the response)
    or `slm distill --data`.

    Example: slm synth --teacher smollm2-135m --prompts topics.txt --template "Explain {prompt} to a Python beginner, with an example." --out synth.jsonl
    """
    from ..data.synth import SynthConfig, read_prompts, run_synth
    cfg = config_from_options(SynthConfig, flags={"n_per_prompt": "--n"}, teacher=teacher, prompts=prompts, template=template,
                              system=system, n_per_prompt=n, max_tokens=max_tokens,
                              temperature=temperature, top_p=top_p, seed=seed, engine=engine,
                              min_chars=min_chars, device=device)
    check_output(out, kind="file", force=force, suffixes=(".jsonl",),
                 inputs={"--prompts": prompts, "--teacher": teacher})
    units.option(read_prompts, "--prompts", prompts)
    check_model(teacher, option="--teacher", engine=None if engine == "auto" else engine)
    report = run_synth(out, cfg, overwrite=force, progress=not json_out)
    if json_out:
        print_json(report)
        return
    console.print(f"wrote {report['records']} records ({report['completion_tokens']:,} tokens, "
                  f"{report['tokens_per_s']} tok/s) to {out}"
                  + (f"; dropped {report['dropped']} short replies" if report["dropped"] else ""))
