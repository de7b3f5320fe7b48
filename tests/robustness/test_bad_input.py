"""Every verb, a table of bad input: exit code 2, one line naming the user's option, no
traceback, nothing written and every input byte unchanged.

Paths are relative to a workspace of good and bad inputs (see ``conftest.make_workspace``);
``{ws}`` is its absolute path. Each command fails in its checks, before any model loads,
so the whole table runs in seconds.
"""
import json

import pytest

from .conftest import snapshot

LONG = "x" * 300                        # a path component longer than NAME_MAX (255)
UNI = "dönüş-数据-😀"

# (verb, arguments, text the error line must contain)
CASES = [
    # ---- models, plan
    ("models", ["--bogus"], "--bogus"),
    ("plan", ["--memory", "4G", "--top", "0"], "--top"),
    ("plan", ["--memory", "4G", "--top", "-3"], "--top"),
    ("plan", ["--memory", "1T"], "--memory 1T"),
    ("plan", ["--memory", "lots"], "--memory"),
    ("plan", ["--memory", "-4G"], "--memory"),
    ("plan", ["--memory", "nan"], "--memory"),
    ("plan", ["--memory", "4G", "--context", "0"], "--context"),
    ("plan", ["--memory", "4G", "--tokens-per-second", "inf"], "--tokens-per-second"),
    ("plan", ["--memory", "4G", "--tokens-per-second", "-1"], "--tokens-per-second"),
    # ---- generate, chat
    ("generate", ["model", ""], "PROMPT"),
    ("generate", ["model", "   "], "PROMPT"),
    ("generate", ["model", "hi", "--max-tokens", "0"], "--max-tokens"),
    ("generate", ["model", "hi", "--temperature", "nan"], "--temperature"),
    ("generate", ["model", "hi", "--temperature", "-1"], "--temperature"),
    ("generate", ["model", "hi", "--top-p", "1.5"], "--top-p"),
    ("generate", ["model", "hi", "--engine", "vllm"], "--engine"),
    ("generate", ["model", "hi", "--engine", "llama.cpp"], "llama.cpp"),
    ("generate", ["model", "hi", "--ctx", "0"], "--ctx"),
    ("generate", ["nosuch", "hi"], "nosuch"),
    ("generate", ["broken", "hi"], "model.safetensors"),
    ("generate", ["half", "hi"], "truncated"),
    ("generate", ["noconfig", "hi"], "config.json"),
    ("generate", ["fake.gguf", "hi"], "fake.gguf"),
    ("generate", ["doc.md", "hi"], "doc.md"),
    ("generate", [f"{UNI}/{LONG}", "hi"], "not found"),
    ("chat", ["nosuch"], "nosuch"),
    ("chat", ["model", "--engine", "llama.cpp"], "llama.cpp"),
    ("chat", ["model", "--top-p", "-0.1"], "--top-p"),
    # ---- eval
    ("eval", ["model", "nosuch", "--engine", "llama.cpp"], "llama.cpp"),
    ("eval", ["model", "nosuch"], "nosuch"),
    ("eval", ["model", "--data", "empty.txt", "--no-speed"], "empty"),
    ("eval", ["model", "--data", "nodata"], "--data"),
    ("eval", ["model", "--data", "bad.jsonl"], "bad.jsonl:2"),
    ("eval", ["model", "--max-length", "1"], "--max-length"),
    ("eval", ["model", "--stride", "0"], "--stride"),
    ("eval", ["model", "--split", "test"], "--split"),
    ("eval", ["model", "--reference", "nosuch"], "--reference"),
    ("eval", ["model", "--engine", "tensorrt"], "--engine"),
    # ---- finetune
    ("finetune", ["model", "--data", "empty.txt", "--out", "o"], "--data"),
    ("finetune", ["model", "--data", "blank.jsonl", "--out", "o"], "--data"),
    ("finetune", ["model", "--data", "cut.jsonl", "--out", "o"], "cut.jsonl:2"),
    ("finetune", ["model", "--data", "latin1.jsonl", "--out", "o"], "UTF-8"),
    ("finetune", ["model", "--data", "data.csv", "--out", "o"], "--data"),
    ("finetune", ["model", "--data", "doc.md", "--out", "doc.md"], "--out"),
    ("finetune", ["model", "--data", "doc.md", "--out", "model"], "--out"),
    ("finetune", ["model", "--data", "doc.md", "--out", "model/sub"], "--out"),
    ("finetune", ["model", "--data", "doc.md", "--out", "."], "--out"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o.gguf"], "--out"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o", "--rank", "0"], "--rank"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o", "--lr", "nan"], "--lr"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o", "--lr", "-1"], "--lr"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o", "--dropout", "1"], "--dropout"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o", "--val-fraction", "1"],
     "--val-fraction"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o", "--epochs", "inf"], "--epochs"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o", "--method", "qlora8"], "--method"),
    ("finetune", ["model", "--data", "doc.md", "--out", "o", "--seq-len", "1"], "--seq-len"),
    ("finetune", ["nosuch", "--data", "doc.md", "--out", "o"], "nosuch"),
    # ---- augment
    ("augment", ["doc.md", "--out", "doc.md"], "--out"),
    ("augment", ["doc.md", "--out", "notes.jsonl"], "already exists"),
    ("augment", ["doc.md", "--out", "/nonexistent/dir/x.jsonl"], "--out"),
    ("augment", ["doc.md", "--out", "x.csv"], "--out"),
    ("augment", ["doc.md", "--out", "nodata"], "--out"),
    ("augment", ["doc.md", "--out", "x.jsonl", "--n", "0"], "--n"),
    ("augment", ["doc.md", "--out", "x.jsonl", "--alpha", "0.9"], "--alpha"),
    ("augment", ["doc.md", "--out", "x.jsonl", "--alpha", "nan"], "--alpha"),
    ("augment", ["doc.md", "--out", "x.jsonl", "--ops", "zz"], "--ops"),
    ("augment", ["doc.md", "--out", "x.jsonl", "--method", "backtranslate"], "--method"),
    ("augment", ["missing.md", "--out", "x.jsonl"], "missing.md"),
    ("augment", ["bad.jsonl", "--out", "x.jsonl"], "bad.jsonl:2"),
    ("augment", ["doc.md", "--out", f"{LONG}.jsonl"], "--out"),
    # ---- prune
    ("prune", ["model", "--method", "width", "--target", "2.0", "--out", "o"], "--target"),
    ("prune", ["model", "--method", "width", "--target", "1.0", "--out", "o"], "--target"),
    ("prune", ["model", "--method", "depth", "--target", "-3", "--out", "o"], "--target"),
    ("prune", ["model", "--method", "depth", "--target", "nan", "--out", "o"], "--target"),
    ("prune", ["model", "--method", "depth", "--target", "5B", "--out", "o"], "--target"),
    ("prune", ["model", "--method", "vocab", "--vocab-size", "1", "--out", "o"], "--vocab-size"),
    ("prune", ["model", "--method", "vocab", "--vocab-size", "10", "--out", "o"], "--vocab-size"),
    ("prune", ["model", "--method", "vocab", "--vocab-size", "100000", "--out", "o"],
     "--vocab-size"),
    ("prune", ["model", "--method", "magnitude", "--out", "o"], "--sparsity"),
    ("prune", ["model", "--method", "wanda", "--sparsity", "1.5", "--out", "o"], "--sparsity"),
    ("prune", ["model", "--method", "wanda", "--sparsity", "0", "--out", "o"], "--sparsity"),
    ("prune", ["model", "--method", "wanda", "--sparsity", "0.3", "--pattern", "2:4",
               "--out", "o"], "--sparsity"),
    ("prune", ["model", "--method", "depth", "--target", "0.5", "--sparsity", "0.5", "--out",
               "o"], "--sparsity"),
    ("prune", ["model", "--method", "wanda", "--sparsity", "0.5", "--calib", "empty.txt",
               "--out", "o"], "--calib"),
    ("prune", ["model", "--method", "wanda", "--sparsity", "0.5", "--nsamples", "0",
               "--out", "o"], "--nsamples"),
    ("prune", ["model", "--method", "magnitude", "--sparsity", "0.5", "--out", "model"],
     "--out"),
    ("prune", ["model", "--method", "magnitude", "--sparsity", "0.5", "--out", "doc.md"],
     "--out"),
    ("prune", ["model", "--method", "magnitude", "--sparsity", "0.5", "--out", "ws-parent"],
     "--out"),
    # ---- distill, synth
    ("distill", ["--teacher", "model", "--student-config", "smollm2-135m", "--set", "foo=bar",
                 "--data", "doc.md", "--out", "o"], "--set foo"),
    ("distill", ["--teacher", "model", "--student-config", "smollm2-135m", "--set",
                 "num_hidden_layers=abc", "--data", "doc.md", "--out", "o"], "--set"),
    ("distill", ["--teacher", "model", "--student-config", "smollm2-135m", "--set",
                 "num_hidden_layers", "--data", "doc.md", "--out", "o"], "--set"),
    ("distill", ["--teacher", "model", "--student-config", "smollm2-135m", "--set",
                 "num_attention_heads=7", "--data", "doc.md", "--out", "o"], "--set"),
    ("distill", ["--teacher", "model", "--student", "model", "--data", "doc.md", "--out", "o",
                 "--w-kl", "0", "--w-ce", "0"], "--w-kl"),
    ("distill", ["--teacher", "model", "--student", "model", "--data", "doc.md", "--out", "o",
                 "--temperature", "0"], "--temperature"),
    ("distill", ["--teacher", "model", "--student", "model", "--data", "doc.md", "--out", "o",
                 "--jsd-beta", "1"], "--jsd-beta"),
    ("distill", ["--teacher", "model", "--student", "model", "--data", "doc.md", "--out", "o",
                 "--layer-pairs", "a:b"], "--layer-pairs"),
    ("distill", ["--teacher", "model", "--student", "nosuch", "--data", "doc.md", "--out",
                 "o"], "--student"),
    ("distill", ["--teacher", "nosuch", "--student", "model", "--data", "doc.md", "--out",
                 "o"], "--teacher"),
    ("distill", ["--teacher", "model", "--student", "model", "--data", "doc.md", "--out",
                 "model"], "--out"),
    ("distill", ["--teacher", "model", "--data", "doc.md", "--out", "o"], "--student"),
    ("synth", ["--teacher", "model", "--prompts", "prompts.txt", "--out", "s3.txt"], "--out"),
    ("synth", ["--teacher", "model", "--prompts", "prompts.txt", "--out", "prompts.txt"],
     "--out"),
    ("synth", ["--teacher", "model", "--prompts", "prompts.txt", "--out", "s.jsonl", "--n", "0"],
     "--n"),
    ("synth", ["--teacher", "model", "--prompts", "empty.txt", "--out", "s.jsonl"],
     "--prompts"),
    ("synth", ["--teacher", "model", "--prompts", "latin1.txt", "--out", "s.jsonl"],
     "--prompts"),
    ("synth", ["--teacher", "model", "--prompts", "prompts.txt", "--out", "s.jsonl",
               "--template", "no slot"], "--template"),
    ("synth", ["--teacher", "nosuch", "--prompts", "prompts.txt", "--out", "s.jsonl"],
     "--teacher"),
    # ---- quantize, export
    ("quantize", ["model", "--out", "q", "--bits", "3"], "--bits"),
    ("quantize", ["model", "--out", "q", "--method", "awq"], "--method"),
    ("quantize", ["model", "--out", "q", "--calib", "nodata"], "--calib"),
    ("quantize", ["model", "--out", "model"], "--out"),
    ("quantize", ["model", "--out", "q.gguf"], "--out"),
    ("export", ["model", "--format", "hf", "--out", "q4.gguf"], "--out"),
    ("export", ["model", "--format", "gguf", "--out", "q4"], "--out"),
    ("export", ["model", "--format", "onnx", "--out", "q4.gguf"], "--format"),
    ("export", ["model", "--type", "q9_9", "--out", "q4.gguf"], "--type"),
    ("export", ["model", "--out", "model"], "--out"),
    ("export", ["model", "--out", "/nonexistent/q4.gguf"], "--out"),
    ("export", ["model", "--out", "q4.gguf", "--parity-tokens", "-1"], "--parity-tokens"),
    # ---- serve, build
    ("serve", ["model", "--port", "70000"], "--port"),
    ("serve", ["model", "--max-concurrency", "0"], "--max-concurrency"),
    ("serve", ["model", "--shutdown-timeout", "-1"], "--shutdown-timeout"),
    ("serve", ["model", "--shutdown-timeout", "nan"], "--shutdown-timeout"),
    ("serve", ["model", "--threads", "0"], "--threads"),
    ("serve", ["model", "--host", "0.0.0.0"], "--api-key"),
    ("serve", ["nosuch"], "nosuch"),
    ("build", ["recipe.yaml", "--check"], "target"),
    ("build", ["no-weights.yaml", "--check"], "smollm2-360m"),
    ("build", ["nosuch.yaml", "--check"], "nosuch.yaml"),
    ("build", ["doc.md", "--check"], "doc.md"),
]


def _ids():
    seen: dict[str, int] = {}
    out = []
    for verb, _, _ in CASES:
        seen[verb] = seen.get(verb, 0) + 1
        out.append(f"{verb}-{seen[verb]}")
    return out


@pytest.mark.parametrize("verb,args,needle", CASES, ids=_ids())
def test_bad_input(verb, args, needle, workspace, run_slm, monkeypatch):
    monkeypatch.chdir(workspace)
    args = [str(workspace.parent) if a == "ws-parent" else a for a in args]
    before = snapshot(workspace.parent)
    r = run_slm(verb, *args)
    assert r.code == 2, r.out
    assert "Traceback" not in r.out, r.out
    assert len(r.error_lines) == 1, r.out
    line = r.error_lines[0]
    assert needle in line, r.out
    for internal in ("'value'", "n-per-prompt", "n_per_prompt", "overwrite", "calib_autocast",
                     "shutdown_timeout_s", "n_threads", "ValidationError", "Errno"):
        assert internal not in line, line
    assert snapshot(workspace.parent) == before, "the command changed files"


def test_every_verb_has_cases():
    from slmkit.cli import VERBS
    assert set(VERBS) <= {verb for verb, _, _ in CASES}


def test_augment_gives_back_the_fields_as_written(workspace, run_slm, monkeypatch):
    """A JSONL ``id: 7`` stays the number 7 in the original and in every copy."""
    monkeypatch.chdir(workspace)
    r = run_slm("augment", "notes.jsonl", "--out", "aug.jsonl", "--n", "3")
    assert r.code == 0, r.out
    rows = [json.loads(line) for line in (workspace / "aug.jsonl").read_text().splitlines()]
    assert rows[0] == {"text": "one line of notes about lists", "id": 7}
    assert len(rows) > 1 and all(row["id"] == 7 for row in rows)
    assert all(row["augmented"] for row in rows[1:])
