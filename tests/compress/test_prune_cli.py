"""`slm prune` end to end on a tiny model saved to disk."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import slmkit
from slmkit.models.tiny import tiny_slm


def slm(*args):
    return subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return slmkit.save(tiny_slm("llama", num_hidden_layers=4), tmp_path_factory.mktemp("m") / "tiny")


FAST = ["--nsamples", "4", "--seqlen", "64", "--eval-tokens", "512"]


def test_cli_wanda_2_4(tiny_dir, tmp_path):
    out = tmp_path / "w24"
    r = slm("prune", str(tiny_dir), "--method", "wanda", "--pattern", "2:4", "--out", str(out),
            "--json", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.5)
    assert report["params_after"] == report["params_before"]
    assert report["bytes_after"] == pytest.approx(report["bytes_before"], rel=0.01)
    assert "sparse kernels" in report["note"]
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[0].mlp.down_proj.weight
    assert torch.all((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2)


def test_cli_depth_table(tiny_dir, tmp_path):
    out = tmp_path / "d"
    r = slm("prune", str(tiny_dir), "--method", "depth", "--target", "0.8", "--out", str(out),
            *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "parameters" in r.stdout and "perplexity" in r.stdout and "removed_layers" in r.stdout
    report = json.loads((out / "report.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4 - len(report["structure"]["removed_layers"]) == 3
    assert report["params_after"] <= 0.8 * report["params_before"]
    assert report["bytes_after"] < report["bytes_before"]


def test_cli_bad_input_writes_nothing(tiny_dir, tmp_path):
    out = tmp_path / "bad"
    r = slm("prune", str(tiny_dir), "--out", str(out), "--method", "sparsegpt",
            "--pattern", "2:5", *FAST)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "does not divide" in errors[0], text
    assert list(tmp_path.iterdir()) == []


def test_cli_vocab_table_and_eval_reference(tiny_dir, tmp_path):
    out = tmp_path / "v"
    r = slm("prune", str(tiny_dir), "--method", "vocab", "--vocab-size", "400", "--out", str(out),
            "--eval-tokens", "256")
    assert r.returncode == 0, r.stdout + r.stderr
    text = " ".join(r.stdout.split())                       # rich wraps long lines
    assert "vocabulary 512 -> 400 tokens" in text and "original tokenizer" in text
    r = slm("eval", str(tiny_dir), str(out), "--reference", str(tiny_dir), "--max-eval-tokens",
            "256", "--no-speed", "--no-isolate", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    base, small = json.loads(r.stdout)["models"]
    assert base["ppl"] == pytest.approx(base["ppl_own_tokens"])
    assert small["ppl_ref_tokens"] == base["ppl_ref_tokens"] < small["ppl_tokens"]
