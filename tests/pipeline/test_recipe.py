"""Recipe validation: every error names the field and its line in the file."""
import re
import textwrap

import pytest

from slmkit.errors import SlmError
from slmkit.pipeline.recipe import load_recipe, shipped

GOOD = """\
name: t
base: tiny:llama
data: python-docs
steps:
  - step: finetune
    method: lora
    max_tokens: 256
  - step: prune
    method: width
    target: 0.7
  - step: distill
    teacher: finetune
  - step: export
    type: q8_0
  - step: eval
"""


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path, text) -> str:
    with pytest.raises(SlmError) as exc:
        load_recipe(write(tmp_path, text))
    return exc.value.one_line()


def line_of(msg: str) -> int:
    m = re.search(r"r\.yaml:(\d+):", msg)
    assert m, msg
    return int(m.group(1))


def test_good_recipe_loads_with_names_and_inputs(tmp_path):
    from slmkit.pipeline.recipe import input_of
    r = load_recipe(write(tmp_path, GOOD))
    assert [s.name for s in r.steps] == ["finetune", "prune", "distill", "export", "eval"]
    assert [input_of(r, i) for i in range(5)] == ["base", "finetune", "prune", "distill",
                                                    "distill"]
    assert r.steps[0].options == {"method": "lora", "max_tokens": 256}


@pytest.mark.parametrize("name", sorted(shipped()))
def test_every_shipped_recipe_loads(name):
    r = load_recipe(name)
    assert r.name == name and r.steps


def test_unknown_step_option_names_field_and_line(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("    target: 0.7", "    target: 0.7\n    tagret: 3"))
    assert line_of(msg) == 11
    assert "steps.1.tagret" in msg and "not an option of step 'prune'" in msg


def test_bad_option_value_names_field_and_line(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("method: lora", "method: lorax"))
    assert line_of(msg) == 6 and "steps.0.method" in msg


def test_option_checked_by_the_step_config(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("type: q8_0", "type: q9_9"))
    assert line_of(msg) == 14 and "steps.3.type" in msg and "q9_9" in msg


def test_unknown_top_level_field(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("data: python-docs", "data: python-docs\ndatta: x"))
    assert line_of(msg) == 4 and "datta" in msg


def test_unknown_step_kind(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("step: eval", "step: evaluate"))
    assert line_of(msg) == 15 and "unknown step 'evaluate'" in msg


def test_missing_data_file(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("data: python-docs", "data: no/such/file.txt"))
    assert line_of(msg) == 3 and "not found" in msg


def test_missing_base_model(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("base: tiny:llama", "base: ./nowhere/model"))
    assert line_of(msg) == 2 and "model" in msg


def test_data_path_relative_to_recipe(tmp_path):
    (tmp_path / "d.txt").write_text("some text " * 50)
    r = load_recipe(write(tmp_path, GOOD.replace("data: python-docs", "data: d.txt")))
    assert r.data == str(tmp_path / "d.txt")


def test_distill_without_teacher(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("    teacher: finetune\n", ""))
    assert line_of(msg) == 11 and "distill needs a teacher" in msg


def test_teacher_must_come_earlier(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("teacher: finetune", "teacher: export"))
    assert line_of(msg) == 12 and "teacher 'export' is a later step" in msg


def test_step_cannot_read_a_gguf(tmp_path):
    text = GOOD.replace("  - step: prune\n", "  - step: prune\n    input: exp\n").replace(
        "  - step: export\n", "  - step: export\n    name: exp\n")
    msg = error_of(tmp_path, text)
    assert line_of(msg) == 9 and "input 'exp' is a later step" in msg


def test_prune_after_quantize_cannot_work(tmp_path):
    text = GOOD.replace("  - step: prune\n", "  - step: quantize\n    method: rtn\n"
                        "  - step: prune\n")
    msg = error_of(tmp_path, text)
    assert line_of(msg) == 10 and "cannot run on the output of 'quantize'" in msg


def test_adapter_only_finetune_cannot_feed_prune(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("max_tokens: 256", "max_tokens: 256\n    merge: false"))
    assert "writes a LoRA adapter only" in msg and line_of(msg) == 9


def test_duplicate_step_names(tmp_path):
    msg = error_of(tmp_path, GOOD + "  - step: eval\n    name: eval\n")
    assert line_of(msg) == 17 and "already used" in msg


def test_yaml_syntax_error_has_line(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("    target: 0.7", "    target: [0.7"))
    assert "not valid YAML" in msg and line_of(msg) >= 10


def test_values_only_no_python_tags(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("name: t", "name: !!python/object/apply:os.system [ls]"))
    assert "not valid YAML" in msg


def test_empty_steps(tmp_path):
    msg = error_of(tmp_path, "name: t\nbase: tiny:llama\ndata: python-docs\nsteps: []\n")
    assert line_of(msg) == 4 and "non-empty" in msg


def test_eval_stages_must_exist(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("  - step: eval", "  - step: eval\n    stages: [base, nope]"))
    assert line_of(msg) == 16 and "'nope' is not an earlier stage" in msg


def test_recipe_not_found():
    with pytest.raises(SlmError, match="not a shipped recipe"):
        load_recipe("no-such-recipe")
