"""The step verbs' options come from their config classes: every field reachable, no
default written twice, and --set checked against the student's config."""
import subprocess
import sys

import pytest
import typer

from slmkit.cli import _register
from slmkit.cli.app import app
from slmkit.cli.options import config_fields, field_default
from slmkit.pipeline.steps import STEPS

VERBS = ("finetune", "distill", "prune", "quantize", "export")


def command(verb: str):
    _register()
    group = typer.main.get_command(app)
    return group.commands[verb]


def cli_params(verb: str) -> dict:
    return {p.name: p for p in command(verb).params}


@pytest.mark.parametrize("verb", VERBS)
def test_every_config_field_has_an_option(verb):
    fields = config_fields(STEPS[verb].config_class())
    params = cli_params(verb)
    missing = [f for f in fields if f not in params]
    assert not missing, f"slm {verb} cannot set {missing}"
    for name in fields:
        assert any(o.startswith("--") for o in params[name].opts), name


@pytest.mark.parametrize("verb", VERBS)
def test_option_defaults_are_the_config_defaults(verb):
    cls = STEPS[verb].config_class()
    params = cli_params(verb)
    checked = 0
    for name, (_, info, _) in config_fields(cls).items():
        p = params[name]
        default = field_default(info)
        if default is ...:
            assert p.required, name
            continue
        shown = p.default
        if p.opts[0] in ("--fp32-hidden", "--no-bf16"):      # inverted switches
            shown = not shown
        assert shown == default and type(shown) is type(default), (name, shown, default)
        checked += 1
    assert checked >= 5


def test_renamed_flags_still_work():
    assert "--force" in cli_params("prune")["overwrite"].opts
    assert "--warmup" in cli_params("distill")["warmup_steps"].opts
    assert "--fp32-hidden" in cli_params("finetune")["bf16_base"].opts
    assert "--bf16-calib" in cli_params("prune")["calib_autocast"].opts
    sym = cli_params("quantize")["sym"]
    assert "--sym" in sym.opts and "--asym" in sym.secondary_opts


def slm(*args):
    return subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    p = tmp_path_factory.mktemp("d") / "doc.md"
    p.write_text("Some text to train on.\n\nAnother paragraph of it.\n")
    return p


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    import slmkit
    from slmkit.models.tiny import tiny_slm
    return slmkit.save(tiny_slm("llama"), tmp_path_factory.mktemp("m") / "tiny")


@pytest.mark.parametrize("item, words", [
    ("foo=bar", ["--set foo", "no field 'foo'"]),
    ("num_hidden_layers=abc", ["--set num_hidden_layers='abc'", "expected int"]),
    ("tie_word_embeddings=1", ["--set tie_word_embeddings=1", "expected bool"]),
    ("hidden_act=3", ["--set hidden_act=3", "expected str"]),
])
def test_set_checked_against_the_student_config(doc, teacher, tmp_path, item, words):
    r = slm("distill", "--teacher", str(teacher), "--student-config", "smollm2-135m",
            "--set", item, "--data", str(doc), "--out", str(tmp_path / "o"))
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    for w in words:
        assert w in lines[0], out
    assert "Traceback" not in out and "StrictDataclass" not in out
    assert not (tmp_path / "o").exists()
