"""slm quantize: weight-only int8/int4 quantization (RTN or GPTQ) to packed integers."""
from __future__ import annotations

from typing import Optional

import typer

from ..compress.quantize import QuantizeConfig, run_quantize
from ..data.preflight import check_data
from ..models.preflight import check_model
from ..outputs import check_output
from ..progress import progress_bar
from .app import TEXT_FIELD, console, print_json
from .options import Flag, flag_names, param, step_command, with_text_fields
from .validate import config_from_options


# How QuantizeConfig's fields show on the command line, where they differ from
# `--field-name` and the field's description; defaults come from the config.
FLAGS = {
    "method": Flag(("--method", "-m"), "rtn (round to nearest) or gptq."),
    "bits": Flag(("--bits", "-b"), "Bits per weight: 8 or 4."),
    "group_size": Flag(("--group-size", "-g"), "Inputs sharing one scale; -1 = one scale per output channel."),
    "sym": Flag(("--sym/--asym",), "Symmetric grid, or asymmetric with a zero point."),
    "act_order": Flag(help="GPTQ: quantize columns by decreasing Hessian diagonal."),
    "clip": Flag(help="GPTQ: pick each group's range by a search that clips outliers when that lowers the (Hessian-weighted) rounding error."),
    "calib": Flag(("--calib", "-c"), "Calibration data (train split); held-out perplexity uses its val split."),
    "calib_samples": Flag(help="Calibration sequences.", min=1),
    "seq_len": Flag(help="Tokens per calibration sequence.", min=2),
    "eval_tokens": Flag(help="Held-out tokens scored before and after (0 skips).", min=0),
    "speed_tokens": Flag(help="Tokens decoded to measure speed before and after (0 skips).", min=0),
}

HEAD = [param("model", str, typer.Argument(..., help="Model: built-in name, HF directory or .gguf file.")),
        param("out", str, typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all)."))]
TAIL = [param("force", bool, typer.Option(False, "--force", help="Replace an existing --out directory.")),
        param("text_field", Optional[str], TEXT_FIELD),
        param("json_out", bool, typer.Option(False, "--json", help="Print the report as JSON."))]


@step_command("quantize", QuantizeConfig, flags=FLAGS, head=HEAD, tail=TAIL)
def quantize_cmd(values: dict, model: str, out: str, force: bool, text_field: Optional[str],
                 json_out: bool):
    """Quantize the decoder Linear layers to packed int8/int4 and report size, quality, speed.

    The result is a smaller model directory (packed integers + float16 scales) that
    slmkit loads and runs, and that `slm export` writes to GGUF.

    Example: slm quantize smollm2-135m --method gptq --bits 4 --group-size 128 --calib python-docs --out runs/q4
    """
    cfg = config_from_options(QuantizeConfig, flags=flag_names(FLAGS),
                              **with_text_fields("quantize", values, text_field))
    check_output(out, kind="dir", force=force, make_parents=True,
                 inputs={"MODEL": model, "--calib": values["calib"]})
    check_model(model)
    check_data(cfg.calib, "--calib")
    with progress_bar(f"{cfg.method} layers", total=None, enabled=not json_out) as bar:
        report = run_quantize(model, out, cfg, overwrite=force,
                              progress=lambda done, total: bar.update(completed=done, total=total))
    if json_out:
        print_json(report)
        return
    _print(report, out)


def _print(r: dict, out: str) -> None:
    from rich.table import Table
    t = Table(title=f"{r['method']} int{r['bits']} g{r['group_size']} "
                    f"{'sym' if r['sym'] else 'asym'}")
    for col in ("", "before", "after"):
        t.add_column(col, justify="right")
    b, a = r["before"], r["after"]
    t.add_row("bytes on disk", f"{r['source_bytes_on_disk']:,}", f"{r['bytes_on_disk']:,}")
    t.add_row("memory (weights)", f"{b['memory_bytes']:,}", f"{a['memory_bytes']:,}")
    if "ppl" in b:
        t.add_row("held-out perplexity", f"{b['ppl']:.3f}", f"{a['ppl']:.3f}")
    if "decode_tok_s" in b:
        t.add_row("decode tok/s (pytorch)", f"{b['decode_tok_s']:.1f}", f"{a['decode_tok_s']:.1f}")
    console.print(t)
    if "mean_output_rel_error" in r:
        console.print(f"mean layer-output error: GPTQ {r['mean_output_rel_error']:.3e} vs "
                      f"RTN {r['mean_rtn_output_rel_error']:.3e}")
    console.print(f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, {r['quantize_s']:.1f} s; "
                  f"saved to {out}")
