"""The build report: ``report.json``, a terminal table and a self-contained ``report.html``.

The HTML has no external resources: plots are matplotlib SVG inlined in the
page, styles are inline, nothing is fetched.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import time
from pathlib import Path

from ..engines import open_engine, stream_text
from ..evaluate.compare import change_text, kept_lost, value_text
from ..outputs import atomic_write_text
from .steps import STEPS

SAMPLES_FILE = "samples.json"
METRICS = [("params", "params"), ("bytes", "bytes"), ("ppl", "ppl domain"),
           ("ppl_general", "ppl general"), ("decode_tok_s", "decode tok/s"),
           ("peak_rss", "peak memory"), ("tokens_per_char", "tokens/char")]


# ---------------------------------------------------------------- data

def stage_rows(build) -> list[dict]:
    """One row per evaluated stage (from the last eval step), in build order."""
    evals = [r for r in build.results.values() if r.step in STEPS and STEPS[r.step].compares]
    rows = list(evals[-1].report.get("models", [])) if evals else []
    seconds = {r.name: r.seconds for r in build.results.values()}
    for row in rows:
        row["step_seconds"] = round(seconds.get(row.get("stage"), 0.0), 1)
    return rows


def curves(build) -> dict[str, list[dict]]:
    """Training loss curves of the steps that trained, by step name."""
    out = {}
    for r in build.results.values():
        curve = (r.report or {}).get("loss_curve")
        if curve:
            out[r.name] = [{"step": p.get("step"), "tokens": p.get("tokens"), "loss": p["loss"]}
                           for p in curve if "loss" in p]
    return out


def final_result(build):
    """The result the build ends with: the last GGUF, else the last model."""
    made = [r for r in build.results.values() if r.artifact]
    ggufs = [r for r in made if str(r.artifact).endswith(".gguf")]
    return (ggufs or made)[-1]


def comparison(rows: list[dict], original: str, final: str) -> dict:
    """Original vs final: each figure and the ratio that matters (higher = better)."""
    by = {r.get("stage"): r for r in rows}
    a, b = by.get(original), by.get(final)
    if not a or not b:
        return {}
    out = {"original": original, "final": final}
    for key, _ in METRICS:
        out[key] = {"original": a.get(key), "final": b.get(key)}

    def ratio(x, y):
        return round(x / y, 3) if x and y else None
    out["smaller_x"] = ratio(a.get("bytes"), b.get("bytes"))
    out["fewer_params_x"] = ratio(a.get("params"), b.get("params"))
    out["faster_x"] = ratio(b.get("decode_tok_s"), a.get("decode_tok_s"))
    out["ppl_domain_ratio"] = ratio(b.get("ppl"), a.get("ppl"))
    out["goal"] = {"2x_smaller": bool(out["smaller_x"] and out["smaller_x"] >= 2),
                   "2x_faster": bool(out["faster_x"] and out["faster_x"] >= 2),
                   "lower_domain_ppl": bool(out["ppl_domain_ratio"]
                                            and out["ppl_domain_ratio"] < 1)}
    out["kept_lost"] = kept_lost(a, b)
    return out


def samples(build, final) -> list[dict]:
    """Greedy generations of the base and the final model for the recipe's prompts (cached)."""
    recipe = build.recipe
    base = build.results["base"]
    key = hashlib.sha256(json.dumps([base.artifact_hash, final.artifact_hash, recipe.prompts,
                                     recipe.sample_tokens]).encode()).hexdigest()
    path = build.out / SAMPLES_FILE
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["samples"]
    except (OSError, ValueError):
        pass
    outs = {name: generate_all(spec, recipe.prompts, recipe.sample_tokens)
            for name, spec in (("original", base.artifact), ("final", final.artifact))}
    rows = [{"prompt": p, "original": outs["original"][i], "final": outs["final"][i]}
            for i, p in enumerate(recipe.prompts)]
    path.write_text(json.dumps({"key": key, "samples": rows}, indent=2))
    return rows


def generate_all(spec: str, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy (temperature 0) continuations of ``prompts`` by the model ``spec``."""
    engine = open_engine(spec)
    return ["".join(stream_text(engine, p, max_tokens=max_tokens, temperature=0.0, seed=0))
            for p in prompts]


def commands(final) -> dict:
    """How to use the built model."""
    path = final.artifact
    return {"chat": f"slm chat {path}", "serve": f"slm serve {path}",
            "generate": f"slm generate {path} 'In Python, a decorator'"}


def write_report(build, seconds: float) -> dict:
    """Write ``report.json`` and ``report.html`` into the run directory; print the table."""
    rows = stage_rows(build)
    final = final_result(build)
    original = build.recipe.compare_to if build.recipe.compare_to in build.results else "base"
    report = {
        "recipe": build.recipe.model_dump(mode="json", exclude={"source"}),
        "recipe_file": build.recipe.source, "run_dir": str(build.out),
        "sizing": build.sizing.as_dict() if build.sizing else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "build_seconds": round(seconds, 1),
        "steps": [{"name": r.name, "step": r.step, "status": r.status, "dir": str(r.dir),
                   "artifact": r.artifact, "seconds": round(r.seconds, 1), "key": r.key}
                  for r in build.results.values()],
        "stages": rows, "final": final.name, "final_artifact": final.artifact,
        "comparison": comparison(rows, original, final.name),
        "loss_curves": curves(build),
        "samples": samples(build, final) if build.recipe.prompts else [],
        "commands": commands(final),
    }
    atomic_write_text(build.out / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(build.out / "report.html", render_html(report))
    print_summary(report, build.console)
    return report


# ---------------------------------------------------------------- terminal

def fmt(key: str, v) -> str:
    """A figure as people read it: 134.5M params, 98.4 MB, 12.31 ppl, 126 tok/s."""
    return value_text(key, v)


def print_summary(report: dict, console) -> None:
    from rich.table import Table
    t = Table(title=f"build {report['recipe']['name']}: every stage side by side")
    t.add_column("stage")
    t.add_column("engine")
    for _, label in METRICS:
        t.add_column(label, justify="right")
    for row in report["stages"]:
        t.add_row(row.get("stage", "?"), row.get("engine", ""),
                  *[fmt(k, row.get(k)) for k, _ in METRICS])
    if any("ppl_ref_tokens" in r for r in report["stages"]):
        t.caption = "perplexity per token of the base model's tokenizer, same text for every stage"
    console.print(t)
    c = report["comparison"]
    if c.get("kept_lost"):
        console.print(kept_lost_table(c))
    if c:
        console.print(f"final '{c['final']}' vs original '{c['original']}': "
                      f"{c['smaller_x']}x smaller, {c['faster_x']}x faster decode, "
                      f"domain perplexity x{c['ppl_domain_ratio']}", highlight=False)
    console.print(f"report: {Path(report['run_dir']) / 'report.html'}", highlight=False)
    for what, cmd in report["commands"].items():
        console.print(f"  {what}: [bold]{cmd}[/]", highlight=False)


def kept_lost_table(c: dict):
    """Original vs final, one figure a row, with the change."""
    from rich.table import Table
    t = Table(title=f"what '{c['final']}' kept and lost against '{c['original']}'")
    for head in ("figure", "original", "final", "change"):
        t.add_column(head, justify="left" if head == "figure" else "right")
    for r in c["kept_lost"]:
        style = "" if r["better"] is None else ("green" if r["better"] else "red")
        t.add_row(r["what"], value_text(r["key"], r["original"]),
                  value_text(r["key"], r["final"]),
                  f"[{style}]{change_text(r)}[/]" if style else change_text(r))
    return t


# ---------------------------------------------------------------- plots

def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]                    # drop the XML prolog and DOCTYPE


def scatter_plot(rows: list[dict], ykeys: list[tuple[str, str]], ylabel: str, title: str,
                 logy: bool = False) -> str:
    """Stages as points: size on disk (MB) against a figure, as inline SVG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in ykeys:
        pts = [(r["bytes"] / 1e6, r[key], r.get("stage", "")) for r in rows
               if r.get(key) and r.get("bytes")]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("size on disk (MB, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(ykeys) > 1:
        ax.legend()
    return _svg(fig)


def kept_lost_plot(c: dict) -> str:
    """The change of every figure, final against original: better in green, worse in red
    (relative change in %, benchmark accuracies in points)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = c["kept_lost"]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2))
    vals = [r["change"] * (1 if r["unit"] == "points" else 100) for r in rows]
    colors = ["#999" if r["better"] is None else ("#2a2" if r["better"] else "#c33")
              for r in rows]
    labels = [f"{r['what']} ({'pts' if r['unit'] == 'points' else '%'})" for r in rows]
    ax.barh(range(len(rows)), vals, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("change, final vs original (% or accuracy points; symlog)")
    ax.set_title(f"kept and lost: {c['final']} vs {c['original']}")
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def loss_plot(curves_by_step: dict[str, list[dict]]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves_by_step.items():
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return _svg(fig)


# ---------------------------------------------------------------- HTML

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots svg{max-width:520px;height:auto}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}.ok{color:#070}.no{color:#a00}"""


def render_html(report: dict) -> str:
    """The whole report as one HTML page (no external resources)."""
    e = html.escape
    rows = report["stages"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
             f"<title>slmkit build: {e(report['recipe']['name'])}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Build <code>{e(report['recipe']['name'])}</code></h1>",
             f"<p>{e(report['recipe'].get('description', ''))}</p>",
             f"<p>Base <code>{e(report['recipe']['base'])}</code>, domain data "
             f"<code>{e(report['recipe']['data'])}</code>, general text "
             f"<code>{e(str(report['recipe'].get('general_data')))}</code>. Finished "
             f"{e(report['finished_at'])} in {report['build_seconds']:.0f} s.</p>",
             _html_comparison(report["comparison"]), "<h2>Every stage</h2>",
             _html_stages(rows), _html_steps(report["steps"]), "<h2>Plots</h2>",
             "<div class='plots'>"]
    if report["comparison"].get("kept_lost"):
        parts.append(kept_lost_plot(report["comparison"]))
    if rows:
        parts.append(scatter_plot(rows, [("ppl", "held-out domain"), ("ppl_general", "general")],
                                  "perplexity (log scale)", "perplexity vs size", logy=True))
        parts.append(scatter_plot(rows, [("decode_tok_s", "decode")], "decode tokens/s",
                                  "decode speed vs size"))
    if report["loss_curves"]:
        parts.append(loss_plot(report["loss_curves"]))
    parts.append("</div>")
    parts += [_html_samples(report["samples"]), _html_commands(report["commands"]),
              "</body></html>"]
    return "\n".join(parts)


def _html_comparison(c: dict) -> str:
    if not c:
        return "<p>No evaluation step: add <code>- step: eval</code> to the recipe.</p>"

    def mark(ok: bool) -> str:
        return "<span class='ok'>yes</span>" if ok else "<span class='no'>no</span>"
    g = c["goal"]
    return (f"<h2>Final vs original</h2><p>Final stage <b>{html.escape(c['final'])}</b> against "
            f"<b>{html.escape(c['original'])}</b>: {c['smaller_x']}x smaller on disk "
            f"({mark(g['2x_smaller'])} for 2x), {c['faster_x']}x faster decode "
            f"({mark(g['2x_faster'])} for 2x), held-out domain perplexity "
            f"x{c['ppl_domain_ratio']} ({mark(g['lower_domain_ppl'])} for lower).</p>"
            + _html_kept_lost(c))


def _html_kept_lost(c: dict) -> str:
    if not c.get("kept_lost"):
        return ""
    body = "".join(
        f"<tr><td>{html.escape(r['what'])}</td>"
        f"<td class='n'>{value_text(r['key'], r['original'])}</td>"
        f"<td class='n'>{value_text(r['key'], r['final'])}</td>"
        f"<td class='n {'' if r['better'] is None else ('ok' if r['better'] else 'no')}'>"
        f"{change_text(r)}</td></tr>" for r in c["kept_lost"])
    return ("<h3>What it kept and what it lost</h3><table><tr><th>figure</th>"
            f"<th>{html.escape(c['original'])}</th><th>{html.escape(c['final'])}</th>"
            f"<th>change</th></tr>{body}</table><p>Domain perplexity on the held-out split "
            "of the build's data, general perplexity on the general text; bits per byte do "
            "not depend on the tokenizer; benchmark accuracies in percent, their change in "
            "points. Green: the result is better on that figure; red: it lost.</p>")


def _html_stages(rows: list[dict]) -> str:
    head = "".join(f"<th>{label}</th>" for _, label in METRICS)
    body = []
    for r in rows:
        cells = "".join(f"<td class='n'>{fmt(k, r.get(k))}</td>" for k, _ in METRICS)
        body.append(f"<tr><td>{html.escape(str(r.get('stage')))}</td>"
                    f"<td>{html.escape(str(r.get('engine', '')))}</td>{cells}</tr>")
    return (f"<table><tr><th>stage</th><th>engine</th>{head}</tr>{''.join(body)}</table>"
            "<p>Perplexity: sliding window over the same held-out characters for every "
            "stage, per token of the base model's tokenizer (a stage with a trimmed "
            "vocabulary spends more, shorter tokens on the same text, and is charged for all "
            "of them); decode tokens/s: greedy, "
            "one stream; peak memory: peak resident set size of the process that ran the "
            "model.</p>")


def _html_steps(steps: list[dict]) -> str:
    body = "".join(f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['step'])}</td>"
                   f"<td>{html.escape(s['status'])}</td><td class='n'>{s['seconds']:.1f}</td>"
                   f"<td><code>{html.escape(str(s['artifact'] or s['dir']))}</code></td></tr>"
                   for s in steps)
    return ("<h2>Steps</h2><table><tr><th>name</th><th>step</th><th>this run</th>"
            f"<th>seconds</th><th>output</th></tr>{body}</table>")


def _html_samples(samples: list[dict]) -> str:
    if not samples:
        return ""
    body = "".join(f"<tr><td><pre>{html.escape(s['prompt'])}</pre></td>"
                   f"<td><pre>{html.escape(s['original'])}</pre></td>"
                   f"<td><pre>{html.escape(s['final'])}</pre></td></tr>" for s in samples)
    return ("<h2>Sample generations (greedy, same prompts)</h2><table><tr><th>prompt</th>"
            f"<th>original</th><th>final</th></tr>{body}</table>")


def _html_commands(cmds: dict) -> str:
    lines = "\n".join(cmds[k] for k in ("chat", "serve"))
    return f"<h2>Use the model</h2><p>Chat with it, or serve it (OpenAI-compatible API):</p>" \
           f"<pre>{html.escape(lines)}</pre>"
