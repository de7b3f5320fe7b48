"""slm distill and slm synth on the command line."""
import json

import pytest

from slmkit.cli import main
from slmkit.models.io import load, save
from slmkit.models.tiny import tiny_slm


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_cli")
    save(tiny_slm("llama", seed=0), root / "teacher")
    save(tiny_slm("llama", seed=1, num_hidden_layers=1), root / "student")
    (root / "data.txt").write_text("\n\n".join(
        f"Item {i}: a dict maps keys to values; keys must be hashable." for i in range(60)))
    (root / "topics.txt").write_text("tuples\nsets\n")
    return root


def run(argv):
    try:
        main(argv)
    except SystemExit as exc:                     # typer may exit 0 after the command
        assert exc.code in (0, None)


def _json_out(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_cli_distill_json_and_student_config(files, tmp_path, capsys):
    run(["distill", "--teacher", str(files / "teacher"), "--student", str(files / "student"),
          "--data", str(files / "data.txt"), "--tokens", "256", "--seq-len", "32",
          "--w-ce", "0.5", "--kd", "jsd", "--out", str(tmp_path / "a"), "--json"])
    rep = _json_out(capsys)
    assert rep["tokens"] == 256 and rep["teacher_unchanged"] is True
    assert rep["loss"]["kd"] == "jsd" and (tmp_path / "a" / "report.json").exists()
    run(["distill", "--teacher", str(files / "teacher"), "--student-config", "smollm2-135m",
          "--set", "num_hidden_layers=1", "--set", "hidden_size=32", "--set",
          "intermediate_size=64", "--set", "num_attention_heads=2", "--set",
          "num_key_value_heads=1", "--set", "head_dim=16", "--data", str(files / "data.txt"),
          "--tokens", "128", "--seq-len", "32", "--out", str(tmp_path / "b"), "--json"])
    assert _json_out(capsys)["params"] < 40_000
    assert load(tmp_path / "b").model.config.num_hidden_layers == 1


@pytest.mark.parametrize("args,msg", [
    (["--kd", "kl"], "--kd: Input should be 'forward_kl'"),
    (["--student-config", "smollm2-135m"], "exactly one of --student and --student-config"),
    (["--cross-tokenizer", "--w-hidden", "1"], "pairs tokens, not hidden states"),
    (["--layer-pairs", "0-1"], "bad --layer-pairs"),
])
def test_cli_distill_bad_input(files, tmp_path, capsys, args, msg):
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--teacher", str(files / "teacher"), "--student",
              str(files / "student"), "--data", str(files / "data.txt"),
              "--out", str(tmp_path / "x"), *args])
    assert exc.value.code == 2
    out = capsys.readouterr().out
    assert msg in out and len(out.strip().splitlines()) <= 2
    assert not (tmp_path / "x").exists()


def test_cli_synth(files, tmp_path, capsys):
    run(["synth", "--teacher", str(files / "teacher"), "--prompts", str(files / "topics.txt"),
          "--out", str(tmp_path / "s.jsonl"), "--max-tokens", "8", "--json"])
    rep = _json_out(capsys)
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert rep["records"] == len(lines) and json.loads(lines[0])["prompt"] == "tuples"
