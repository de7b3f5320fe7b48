"""Bad input gets one line naming the problem and the fix, exit code 2, no traceback."""
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
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], out


def test_help_lists_verbs():
    r = slm("--help")
    assert r.returncode == 0
    for verb in ("models", "eval", "generate", "chat"):
        assert verb in r.stdout


def test_missing_model_path(tmp_path):
    _one_line_error(slm("generate", str(tmp_path / "nope"), "hi"), "not found")


def test_unknown_model_name():
    _one_line_error(slm("eval", "gpt-17", "--no-speed"), "gpt-17", "smollm2-135m")


def test_truncated_gguf(tmp_path):
    from slmkit.models.io import builtin_gguf
    src = builtin_gguf("smollm2-135m")
    bad = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(2_000_000))
    _one_line_error(slm("generate", str(bad), "hi"), "cut.gguf")


def test_corrupt_safetensors(tiny_dir, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"garbage" * 10)
    _one_line_error(slm("generate", str(broken), "hi"), "model.safetensors")


def test_empty_data_file(tiny_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _one_line_error(slm("eval", str(tiny_dir), "--data", str(empty), "--no-speed"), "empty")


def test_unknown_option_exits_2():
    r = slm("models", "--bogus")
    assert r.returncode == 2 and "No such option" in r.stdout + r.stderr


def test_debug_shows_traceback(tmp_path):
    r = slm("--debug", "generate", str(tmp_path / "nope"), "hi")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_models_json():
    import json
    r = slm("models", "--json")
    rows = json.loads(r.stdout)
    smol = next(x for x in rows if x["name"] == "smollm2-135m")
    assert smol["params"] == 134_515_008 and smol["available"] is True
    assert smol["weights_bytes"]["fp16"] == 2 * smol["params"]


def test_generate_json_on_tiny(tiny_dir):
    import json
    r = slm("generate", str(tiny_dir), "def f(x):", "-t", "0", "-n", "8", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] <= 8
