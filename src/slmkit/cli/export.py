"""slm export: GGUF for llama.cpp, or a plain HF safetensors directory."""
from __future__ import annotations

from typing import Optional

import typer

from ..data.preflight import check_data
from ..models.preflight import check_model
from ..outputs import check_output
from ..export import ExportConfig, run_export
from ..progress import progress_bar
from .app import TEXT_FIELD, console, print_json
from .options import Flag, flag_names, param, step_command, with_text_fields
from .validate import config_from_options


# How ExportConfig's fields show on the command line, where they differ from
# `--field-name` and the field's description; defaults come from the config.
FLAGS = {
    "format": Flag(("--format", "-f"), "gguf or hf."),
    "type": Flag(("--type", "-t"), "GGUF type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k, ..."),
    "parity_tokens": Flag(help="Held-out tokens for the parity check (0 skips).", min=0),
    "parity_text": Flag(help="Text for the parity check (val split)."),
    "fp32": Flag(help="hf: write fp32 weights (default: the model's own dtype, bf16 unless it was made in another)."),
}

HEAD = [param("model", str, typer.Argument(..., help="Model: built-in name, HF directory (also quantized) or .gguf file.")),
        param("out", str, typer.Option(..., "--out", "-o", help="Output .gguf file, or directory for --format hf."))]
TAIL = [param("force", bool, typer.Option(False, "--force", help="Replace an existing output.")),
        param("text_field", Optional[str], TEXT_FIELD),
        param("json_out", bool, typer.Option(False, "--json", help="Print the report as JSON."))]


@step_command("export", ExportConfig, flags=FLAGS, head=HEAD, tail=TAIL)
def export_cmd(values: dict, model: str, out: str, force: bool, text_field: Optional[str],
               json_out: bool):
    """Export a model to GGUF (checked against PyTorch in llama.cpp) or to plain HF safetensors.

    Every export is reloaded and compared with the PyTorch model on a fixed held-out
    text: next-token argmax agreement and perplexity, printed and saved in the report.

    Example: slm export runs/q4 --format gguf --type q4_0 --out runs/q4.gguf
    """
    cfg = config_from_options(ExportConfig, flags=flag_names(FLAGS),
                              **with_text_fields("export", values, text_field))
    fmt = cfg.format
    if fmt == "hf":
        check_output(out, kind="dir", force=force, inputs={"MODEL": model}, make_parents=True)
    else:
        check_output(out, kind="file", force=force, suffixes=(".gguf",), inputs={"MODEL": model})
    check_model(model)
    if cfg.parity_tokens:
        check_data(cfg.parity_text, "--parity-text")
    with progress_bar(f"export {fmt}", total=None, enabled=not json_out):
        report = run_export(model, out, cfg, overwrite=force)
    if json_out:
        print_json(report)
        return
    p = report.get("parity")
    what = f"{fmt} {report.get('type', '')}".strip()
    console.print(f"wrote {report['path']} ({what}, {report['bytes_on_disk'] / 2**20:.1f} MiB)")
    if "packed_direct" in report and (report["packed_direct"] or report["packed_dequantized"]):
        console.print(f"packed layers copied as blocks: {report['packed_direct']}, "
                      f"dequantized and re-encoded: {report['packed_dequantized']}")
    if p:
        console.print(f"parity ({p['engine']}, {p['tokens']} tokens): argmax agreement "
                      f"{100 * p['argmax_agreement']:.1f}%, perplexity {p['ppl_pytorch']:.3f} "
                      f"-> {p['ppl_export']:.3f} ({p['ppl_diff_pct']:+.2f}%)")
    console.print(f"report: {report['report_path']}")
