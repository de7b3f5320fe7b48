"""The step registry: the recipe checker, the build and the runner read it."""
import inspect
import json

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from slmkit.errors import SlmError
from slmkit.outputs import refuse_existing
from slmkit.pipeline import recipe as recipe_mod
from slmkit.pipeline import steps
from slmkit.pipeline.build import step_key
from slmkit.pipeline.recipe import parse_recipe, read_yaml, resolved_options
from slmkit.pipeline.steps import STEPS, StepKind


def test_recipe_docstring_example_validates():
    doc = inspect.getdoc(recipe_mod)
    example = doc.split("\n\n")[1]
    data, loc = read_yaml(example, "docstring")
    r = parse_recipe(data, loc, check_files=False)
    assert [s.step for s in r.steps] == ["finetune", "prune", "distill", "export", "eval"]
    assert r.steps[0].options["max_tokens"] == 60000


class MergeConfig(BaseModel):
    """A step kind this test adds with one registry line."""

    model_config = ConfigDict(extra="forbid")
    calib: str = "python-docs"
    alpha: float = Field(0.5, gt=0, lt=1)
    seed: int = 0


@pytest.fixture
def notes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("notes.md", "held.md"):
        (tmp_path / name).write_text("A paragraph of notes.\n\nAnd another one.\n")
    return tmp_path


def test_a_new_step_kind_is_one_registry_line(monkeypatch, notes):
    kind = StepKind("merge", __name__, "MergeConfig", "run_merge", "hf",
                    data={"calib": ("data",)})
    monkeypatch.setitem(STEPS, "merge", kind)
    text = ("name: t\nbase: tiny:llama\ndata: notes.md\nseed: 3\n"
            "steps:\n  - {step: merge, alpha: 0.3}\n  - {step: eval}\n")
    data, loc = read_yaml(text, "t.yaml")
    r = parse_recipe(data, loc, check_files=False)
    opts = resolved_options(r, 0)
    assert opts == {"alpha": 0.3, "calib": "notes.md", "seed": 3}
    assert recipe_mod.input_of(r, 1) == "merge"          # it makes a model the eval reads
    bad = text.replace("alpha: 0.3", "alpha: 2")
    data, loc = read_yaml(bad, "t.yaml")
    with pytest.raises(SlmError, match=r"t.yaml:6: steps.0.alpha"):
        parse_recipe(data, loc, check_files=False)


def test_data_fields_come_from_the_registry(notes):
    assert steps.data_fields() >= {"data", "calib", "eval_data", "parity_text", "general_data"}
    text = ("name: t\nbase: tiny:llama\ndata: notes.md\neval_data: held.md\n"
            "steps:\n  - {step: prune, method: magnitude, sparsity: 0.5}\n"
            "  - {step: quantize}\n  - {step: export}\n  - {step: eval}\n")
    data, loc = read_yaml(text, "t.yaml")
    r = parse_recipe(data, loc, check_files=False)
    assert resolved_options(r, 0)["calib"] == "notes.md"
    assert resolved_options(r, 0)["eval_data"] == "held.md"
    assert resolved_options(r, 1)["calib"] == "notes.md"
    assert resolved_options(r, 2)["parity_text"] == "notes.md"
    ev = resolved_options(r, 3)
    assert (ev["data"], ev["split"]) == ("held.md", "all")


def test_step_key_follows_the_data_a_step_names(tmp_path):
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("one paragraph\n")
    b.write_text("one paragraph\n")
    k = step_key("quantize", {"calib": str(a)}, "h", None)
    b_key = step_key("quantize", {"calib": str(b)}, "h", None)
    assert k != b_key                                     # another path
    a.write_text("another paragraph\n")
    from slmkit.pipeline import build
    build._DATA_FP.clear()
    assert step_key("quantize", {"calib": str(a)}, "h", None) != k   # other contents


def test_one_guard_for_an_existing_output(tmp_path):
    out = tmp_path / "o"
    refuse_existing(out, False)                           # absent: fine
    out.mkdir()
    with pytest.raises(SlmError, match="already exists.*--force"):
        refuse_existing(out, False, "--out")
    refuse_existing(out, True)


def test_quantize_works_on_a_copy_and_writes_report_atomically(tiny, tmp_path):
    from slmkit.compress.quantize import QuantizeConfig, run_quantize, quant_linears
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    cfg = QuantizeConfig(method="rtn", bits=8, group_size=16, calib_samples=1, seq_len=16,
                         eval_tokens=0, speed_tokens=0, device="cpu")
    out = tmp_path / "q"
    report = run_quantize(tiny, out, cfg)
    assert not quant_linears(tiny.model)                  # the caller's model is unchanged
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["bytes_on_disk"] == report["bytes_on_disk"] > 0
    history = json.loads((out / "slmkit.json").read_text())["history"]
    assert history[-1]["step"] == "quantize"
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no temporary left
    with pytest.raises(SlmError, match="already exists"):
        run_quantize(tiny, out, cfg)
    run_quantize(tiny, out, cfg, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["q"]


def test_recipes_name_no_step_kind():
    """The recipe checker and the build read the registry instead of naming kinds."""
    import slmkit.pipeline.build as build
    for mod in (recipe_mod, build):
        src = inspect.getsource(mod)
        for kind in STEPS:
            assert f'step == "{kind}"' not in src and f"step.step == '{kind}'" not in src
