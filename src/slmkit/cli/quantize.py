"""slm quantize: weight-only int8/int4 quantization (RTN or GPTQ) to packed integers."""
from __future__ import annotations

from typing import Optional

import typer

from ..data import with_text_field
from ..data.preflight import check_data
from ..models.preflight import check_model
from ..outputs import check_output
from ..progress import progress_bar
from .app import DeviceOpt, TEXT_FIELD, app, console, print_json
from .validate import config_from_options


@app.command("quantize")
def quantize_cmd(
    model: str = typer.Argument(..., help="Model: built-in name, HF directory or .gguf file."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all)."),
    method: str = typer.Option("gptq", "--method", "-m", help="rtn (round to nearest) or gptq."),
    bits: int = typer.Option(4, "--bits", "-b", help="Bits per weight: 8 or 4."),
    group_size: int = typer.Option(128, "--group-size", "-g", help="Inputs sharing one scale; -1 = one scale per output channel."),
    sym: bool = typer.Option(True, "--sym/--asym", help="Symmetric grid, or asymmetric with a zero point."),
    act_order: bool = typer.Option(False, "--act-order", help="GPTQ: quantize columns by decreasing Hessian diagonal."),
    clip: bool = typer.Option(True, "--clip/--no-clip", help="GPTQ: pick each group's range by a search that clips outliers when that lowers the (Hessian-weighted) rounding error."),
    calib: str = typer.Option("python-docs", "--calib", "-c", help="Calibration data (train split); held-out perplexity uses its val split."),
    calib_samples: int = typer.Option(64, min=1, help="Calibration sequences."),
    seq_len: int = typer.Option(512, min=2, help="Tokens per calibration sequence."),
    eval_tokens: int = typer.Option(4096, min=0, help="Held-out tokens scored before and after (0 skips)."),
    speed_tokens: int = typer.Option(32, min=0, help="Tokens decoded to measure speed before and after (0 skips)."),
    device: str = DeviceOpt,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
    text_field: Optional[str] = TEXT_FIELD,
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Quantize the decoder Linear layers to packed int8/int4 and report size, quality, speed.

    The result is a smaller model directory (packed integers + float16 scales) that
    slmkit loads and runs, and that `slm export` writes to GGUF.

    Example: slm quantize smollm2-135m --method gptq --bits 4 --group-size 128 --calib python-docs --out runs/q4
    """
    from ..compress.quantize import QuantizeConfig, run_quantize
    cfg = config_from_options(QuantizeConfig, method=method, bits=bits, group_size=group_size,
                              sym=sym, act_order=act_order, clip=clip, calib=with_text_field(calib, text_field),
                              calib_samples=calib_samples, seq_len=seq_len,
                              eval_tokens=eval_tokens, speed_tokens=speed_tokens, device=device)
    check_output(out, kind="dir", force=force, make_parents=True,
                 inputs={"MODEL": model, "--calib": calib})
    check_model(model)
    check_data(cfg.calib, "--calib")
    with progress_bar(f"{method} layers", total=None, enabled=not json_out) as bar:
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
