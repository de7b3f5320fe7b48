"""The build report: self-contained HTML that Chromium renders, and the comparison figures."""
import re
import shutil
import subprocess

import pytest

from slmkit.pipeline.report import comparison, render_html

ROWS = [
    {"stage": "base", "engine": "pytorch", "params": 134_515_008, "bytes": 538_000_000,
     "ppl": 12.0, "ppl_general": 30.0, "decode_tok_s": 20.0, "peak_rss": 900_000_000},
    {"stage": "original-f16", "engine": "llama.cpp", "params": 134_515_008,
     "bytes": 270_000_000, "ppl": 12.1, "ppl_general": 30.2, "decode_tok_s": 60.0,
     "peak_rss": 400_000_000},
    {"stage": "gguf", "engine": "llama.cpp", "params": 80_000_000, "bytes": 50_000_000,
     "ppl": 10.0, "ppl_general": 45.0, "decode_tok_s": 150.0, "peak_rss": 150_000_000},
]
ROWS[1]["tasks"] = {"arc_easy": {"acc": 0.54, "acc_norm": 0.48, "n": 500},
                    "winogrande": {"acc": 0.52, "acc_norm": None, "n": 500}}
ROWS[2]["tasks"] = {"arc_easy": {"acc": 0.47, "acc_norm": 0.49, "n": 500},
                    "winogrande": {"acc": 0.52, "acc_norm": None, "n": 500}}


def report_dict():
    return {
        "recipe": {"name": "demo", "description": "a <test> recipe", "base": "smollm2-135m",
                   "data": "python-docs", "general_data": "wordnet-glosses"},
        "finished_at": "2026-01-01T00:00:00", "build_seconds": 12.0,
        "comparison": comparison(ROWS, "original-f16", "gguf"), "stages": ROWS,
        "steps": [{"name": "gguf", "step": "export", "status": "ran", "seconds": 3.0,
                   "artifact": "runs/demo/05-gguf/model.gguf", "dir": "runs/demo/05-gguf"}],
        "loss_curves": {"finetune": [{"step": i, "loss": 3 - i / 10} for i in range(10)],
                        "distill": [{"step": i, "loss": 2 - i / 20} for i in range(10)]},
        "samples": [{"prompt": "def f(x):", "original": " return x <b>", "final": " pass"}],
        "commands": {"chat": "slm chat runs/demo/05-gguf/model.gguf",
                     "serve": "slm serve runs/demo/05-gguf/model.gguf"},
    }


def test_comparison_ratios_and_goal():
    c = comparison(ROWS, "original-f16", "gguf")
    assert c["smaller_x"] == pytest.approx(5.4) and c["faster_x"] == pytest.approx(2.5)
    assert c["ppl_domain_ratio"] == pytest.approx(10 / 12.1, abs=1e-3)
    assert c["goal"] == {"2x_smaller": True, "2x_faster": True, "lower_domain_ppl": True}
    worse = comparison(ROWS, "gguf", "base")
    assert worse["goal"] == {"2x_smaller": False, "2x_faster": False, "lower_domain_ppl": False}


def test_kept_and_lost_rows():
    rows = {r["what"]: r for r in comparison(ROWS, "original-f16", "gguf")["kept_lost"]}
    assert rows["domain perplexity"]["change"] == pytest.approx(10 / 12.1 - 1)
    assert rows["domain perplexity"]["better"] is True
    assert rows["general perplexity"]["change"] == pytest.approx(45 / 30.2 - 1)
    assert rows["general perplexity"]["better"] is False
    assert rows["decode tok/s"]["better"] is True and rows["size on disk"]["better"] is True
    assert rows["arc_easy acc"]["change"] == pytest.approx(-7.0)       # points
    assert rows["arc_easy acc"]["better"] is False
    assert rows["arc_easy acc_norm"]["better"] is True
    assert rows["winogrande acc"]["better"] is None                     # unchanged
    assert "winogrande acc_norm" not in rows                           # not reported
    assert "domain bits/byte" not in rows                              # neither row has it


def test_html_is_self_contained_and_escaped():
    page = render_html(report_dict())
    assert page.count("<svg") == 4                       # kept/lost, ppl, tok/s, loss curves
    assert "What it kept and what it lost" in page and "-7.0 pts" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page
    assert "a &lt;test&gt; recipe" in page and "x &lt;b&gt;" in page
    assert page.rstrip().endswith("</html>")
    assert page.index("slm chat runs/demo") > page.index("Sample generations")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not shutil.which(exe):
        pytest.skip("chromium is not installed (make sysdeps)")
    page = tmp_path / "report.html"
    page.write_text(render_html(report_dict()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<svg" in dom.stdout and "Final vs original" in dom.stdout
    assert dom.stdout.count("<tr>") >= 5
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000                  # plots and tables, not a blank page
