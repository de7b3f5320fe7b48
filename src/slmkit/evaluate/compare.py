"""What a model kept and what it lost against another: one row per figure, with the change.

Rows come from ``run_eval`` rows of the original and the result: domain and
general perplexity and bits per byte (lower is better), benchmark accuracies
(higher is better; the change in points), size, parameters, speed and memory.
"""
from __future__ import annotations

# (row key, label, kind, higher is better)
FIGURES = [
    ("ppl", "domain perplexity", "quality", False),
    ("ppl_bpb", "domain bits/byte", "quality", False),
    ("ppl_general", "general perplexity", "quality", False),
    ("ppl_general_bpb", "general bits/byte", "quality", False),
    ("bytes", "size on disk", "size", False),
    ("params", "parameters", "size", False),
    ("decode_tok_s", "decode tok/s", "speed", True),
    ("prefill_tok_s", "prefill tok/s", "speed", True),
    ("ttft_s", "time to first token (s)", "speed", False),
    ("peak_rss", "peak memory", "size", False),
]


def kept_lost(original: dict, final: dict) -> list[dict]:
    """Figures both rows have, original beside final.

    Returns:
        ``[{"key", "what", "kind", "original", "final", "change", "unit", "better"}]``:
        ``change`` is the relative change (final / original - 1) for measured
        quantities and the difference in points for accuracies (``unit`` says which);
        ``better`` is True when the result improved on the figure, False when it lost.
    """
    out = []
    for key, label, kind, higher in FIGURES:
        a, b = original.get(key), final.get(key)
        if _num(a) and _num(b) and a:
            out.append(_row(key, label, kind, a, b, b / a - 1, "relative", higher))
    for name, metric, a, b in _benchmarks(original, final):
        out.append(_row(f"tasks.{name}.{metric}", f"{name} {metric}", "benchmark", a, b,
                        (b - a) * 100, "points", True))
    return out


def _row(key, label, kind, a, b, change, unit, higher) -> dict:
    return {"key": key, "what": label, "kind": kind, "original": a, "final": b,
            "change": change, "unit": unit,
            "better": None if change == 0 else (change > 0) == higher}


def _benchmarks(original: dict, final: dict):
    """``(task, metric, original, final)`` for each accuracy both rows report."""
    a_tasks, b_tasks = original.get("tasks") or {}, final.get("tasks") or {}
    for name, a in a_tasks.items():
        b = b_tasks.get(name)
        if not isinstance(a, dict) or not isinstance(b, dict):
            continue
        for metric in ("acc", "acc_norm"):
            if _num(a.get(metric)) and _num(b.get(metric)):
                yield name, metric, a[metric], b[metric]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def change_text(r: dict) -> str:
    """A row's change as people read it: -12.3%, +1.5 pts."""
    if r["unit"] == "points":
        return f"{r['change']:+.1f} pts"
    return f"{r['change'] * 100:+.1f}%"


def value_text(key: str, v) -> str:
    """A figure as people read it."""
    if v is None:
        return "-"
    if not isinstance(v, (int, float)):
        return str(v)
    if key == "params":
        return f"{v / 1e6:.1f}M"
    if key in ("bytes", "peak_rss"):
        return f"{v / 1e6:.1f} MB"
    if key.startswith("tasks."):
        return f"{v * 100:.1f}"
    if key.endswith("_bpb"):
        return f"{v:.4f}"
    if key == "tokens_per_char":
        return f"{v:.3f}"
    if key == "ttft_s":
        return f"{v:.3f}"
    if key.endswith("tok_s"):
        return f"{v:.1f}"
    return f"{v:.2f}"
