"""`slm build` over the user's own things: --data/--base overrides, --show, --init, --list,
and builds on a small generated directory of mixed files."""
import json
import subprocess
import sys

import pytest
import yaml

from slmkit.pipeline.build import Build
from slmkit.pipeline.recipe import RECIPES_DIR, load_recipe, shipped

from .own_docs import make_docs


def slm(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "slmkit", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def one_line_error(r, *needles):
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], out


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return make_docs(tmp_path_factory.mktemp("own") / "our-docs", chars=40_000)


def test_show_prints_the_recipe_yaml():
    r = slm("build", "--show")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"# {RECIPES_DIR / 'default.yaml'}"
    assert yaml.safe_load(r.stdout)["name"] == "default"
    r = slm("build", "--show", "--quick")
    assert yaml.safe_load(r.stdout)["name"] == "quick"


def test_list_says_where_recipes_live_one_line_each():
    r = slm("build", "--list")
    assert r.returncode == 0 and str(RECIPES_DIR) in r.stdout
    lines = r.stdout.splitlines()[1:]
    assert len(lines) == len(shipped())
    assert any(ln.split()[0] == "default" and "smollm2-135m on python-docs" in ln for ln in lines)


def test_init_writes_an_editable_copy(tmp_path):
    r = slm("build", "--init", "mine", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "mine.yaml").read_text()
    assert "# The default build" in text                          # comments kept
    recipe = load_recipe(tmp_path / "mine.yaml")
    assert recipe.name == "mine" and recipe.quick is None
    assert [s.name for s in recipe.steps] == [s.name for s in load_recipe("default").steps]
    one_line_error(slm("build", "--init", "mine", cwd=tmp_path), "mine.yaml already exists",
                   "--force")


def test_overrides_are_checked_before_any_work(tmp_path, docs):
    one_line_error(slm("build", "--data", tmp_path / "nope"), "--data", "not found")
    one_line_error(slm("build", "--eval-data", tmp_path / "nope"), "--eval-data", "not found")
    one_line_error(slm("build", "--data", docs, "--check"), "faq.csv: no column 'text'",
                   "--text-field")
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "notes.md").write_text("# Notes\n\nOne line.\n\nAnother one.\n")
    r = slm("build", "--data", tmp_path / "few", "--base", "tiny:llama", "--check",
            "--out", tmp_path / "run")
    one_line_error(r, "too small for step 'finetune'", "it needs at least")
    assert not (tmp_path / "run").exists()


def test_check_resolves_the_default_recipe_on_own_files(tmp_path, docs):
    r = slm("build", "--data", docs, "--text-field", "body", "--base", "tiny:llama", "--check",
            "--json")
    assert r.returncode == 0, r.stderr
    sizing = json.loads(r.stdout[r.stdout.index("{"):])
    assert sizing["base"]["spec"] == "tiny:llama"
    data = sizing["data"][f"{docs}#body"]
    assert data["tokens"]["val"] > 0 and data["records"]["train"] > 10
    options = {(o["step"], o["option"]): o["value"] for o in sizing["options"]}
    assert options[("finetune", "max_tokens")] == int(0.75 * data["tokens"]["train"])
    assert ("prune", "target") in options and ("vocab", "vocab_size") in options


class Stop(Exception):
    pass


def test_tiny_build_on_own_files(tmp_path, docs):
    """The tiny recipe on the generated directory, its data and text column from overrides,
    up to the quantized model (every step that reads the data)."""
    recipe = load_recipe("tiny", overrides={"data": str(docs), "text_field": "body",
                                            "eval_data": str(docs / "faq.csv")})
    assert recipe.data == f"{docs}#body" and recipe.prompts is None

    def stop(res):
        if res.name == "quantize":
            raise Stop

    build = Build(recipe, tmp_path / "run", after_step=stop)
    with pytest.raises(Stop):
        build.run()
    assert build.recipe.prompts and all(p.strip() for p in build.recipe.prompts)
    ft = json.loads((tmp_path / "run" / "01-finetune" / "report.json").read_text())
    assert ft["data"]["val_records"] > 0 and ft["val_ppl_after"] > 0
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["data"] == f"{docs}#body"


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("base", ["smollm2-135m", "gemma3-270m"])
def test_quick_build_on_own_files(tmp_path, docs, base):
    """`slm build --data DIR --base MODEL --quick` from a fresh run directory, end to end."""
    out = tmp_path / "run"
    r = slm("build", "--quick", "--data", docs, "--text-field", "body", "--base", base,
            "--out", out, timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["sizing"]["base"]["spec"] == base
    rows = {row["stage"]: row for row in report["stages"]}
    assert set(rows) == {"original-f16", "gguf"}
    for row in rows.values():
        assert row["ppl"] > 1 and 0 < row["tokens_per_char"] < 1
    assert rows["gguf"]["bytes"] < rows["original-f16"]["bytes"] / 2
    assert report["samples"] and report["samples"][0]["prompt"]
