"""`slm eval --task`: bad tasks and bad models fail in one line, exit 2, before any scoring."""
import json
import subprocess
import sys

import pytest

import slmkit
from slmkit.models.tiny import tiny_slm


def slm(*args):
    return subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return slmkit.save(tiny_slm("llama"), tmp_path_factory.mktemp("m") / "tiny")


def _one_line_error(r, *needles):
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out and "eval 1/" not in out, out        # nothing was scored
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], out


def test_unknown_task_lists_known(tiny_dir):
    _one_line_error(slm("eval", str(tiny_dir), "--task", "arc_easy,nope", "--no-speed"),
                    "unknown task 'nope'", "arc_easy, arc_challenge, hellaswag", "mmlu")


def test_choices_string_is_refused(tiny_dir, tmp_path):
    f = tmp_path / "quiz.jsonl"
    f.write_text(json.dumps({"question": "q", "choices": "ab", "answer": 0}) + "\n")
    _one_line_error(slm("eval", str(tiny_dir), "--task", str(f), "--no-speed"),
                    "quiz.jsonl:1", "choices must be a list of at least two strings")


def test_malformed_task_file(tiny_dir, tmp_path):
    f = tmp_path / "quiz.jsonl"
    f.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{oops\n')
    _one_line_error(slm("eval", str(tiny_dir), "--task", str(f), "--no-speed"),
                    "quiz.jsonl:2", "not valid JSON")


def test_every_model_resolves_before_scoring(tiny_dir, tmp_path):
    _one_line_error(slm("eval", str(tiny_dir), str(tmp_path / "missing"), "--task", "arc_easy",
                        "--no-speed"), "missing", "not found")


def test_bad_limit_and_fewshot(tiny_dir):
    _one_line_error(slm("eval", str(tiny_dir), "--task", "piqa", "--limit", "0"), "limit")
    _one_line_error(slm("eval", str(tiny_dir), "--task", "piqa", "--num-fewshot", "-1"),
                    "num-fewshot")


def test_task_table_and_json(tiny_dir, tmp_path):
    r = slm("eval", str(tiny_dir), "--task", "arc_easy,winogrande", "--limit", "4", "--no-speed",
            "--max-eval-tokens", "64", "--json")
    assert r.returncode == 0, r.stderr
    tasks = json.loads(r.stdout)["models"][0]["tasks"]
    assert tasks["arc_easy"]["n"] == 4 and tasks["arc_easy"]["split"] == "test"
    assert 0 <= tasks["arc_easy"]["acc"] <= 1 and tasks["winogrande"]["acc_norm"] is None
    r = slm("eval", str(tiny_dir), "--task", "piqa", "--limit", "3", "--no-speed",
            "--max-eval-tokens", "64")
    assert r.returncode == 0, r.stderr
    assert "piqa" in r.stdout and "acc_norm" in r.stdout and "±" in r.stdout
