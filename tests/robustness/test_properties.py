"""Property-based checks of the data readers, the recipe loader and the option parsers:
whatever bytes or values come in, the answer is the data (fields as written) or one
SlmError, never another exception."""
import json
import unicodedata

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmkit import units
from slmkit.data import read_records
from slmkit.errors import SlmError
from slmkit.pipeline.recipe import Located, load_recipe, parse_recipe

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
json_scalar = st.none() | st.booleans() | st.integers(-10**12, 10**12) | text | st.floats(
    allow_nan=False, allow_infinity=False)
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=3)
                          | st.dictionaries(text, c, max_size=3), max_leaves=8)
record = st.fixed_dictionaries(
    {"text": text.filter(lambda s: s.strip())},
    optional={"id": st.integers(0, 10**6) | text, "label": json_value, "score": json_value})


def _nfc(v):
    if isinstance(v, str):
        return unicodedata.normalize("NFC", v)
    if isinstance(v, list):
        return [_nfc(x) for x in v]
    if isinstance(v, dict):
        return {k if not isinstance(k, str) else _nfc(k): _nfc(x) for k, x in v.items()}
    return v


@SETTINGS
@given(records=st.lists(record, min_size=1, max_size=6), bom=st.booleans(),
       newline=st.sampled_from(["\n", "\r\n"]), blank_lines=st.booleans())
def test_jsonl_fields_come_back_as_written(tmp_path, records, bom, newline, blank_lines):
    path = tmp_path / "d.jsonl"
    sep = newline * (2 if blank_lines else 1)
    body = sep.join(json.dumps(r, ensure_ascii=False) for r in records) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8"))
    got = read_records(path)
    assert len(got) == len(records)
    for want, have in zip(records, got):
        want = _nfc(want)
        for key, value in want.items():           # every field the user wrote, unchanged
            assert have[key] == value


@SETTINGS
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".txt", ".md", ".csv"]))
def test_any_bytes_read_or_one_error(tmp_path, raw, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(raw)
    try:
        records = read_records(path)
    except SlmError as exc:
        assert "\n" not in exc.one_line()
        return
    assert records and all(isinstance(r, dict) for r in records)


@SETTINGS
@given(lines=st.lists(json_value.map(lambda v: json.dumps(v)) | text, max_size=5))
def test_any_jsonl_lines_read_or_one_error(tmp_path, lines):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        read_records(path)
    except SlmError as exc:
        assert "\n" not in exc.one_line()


steps = st.lists(st.dictionaries(
    st.sampled_from(["step", "name", "input", "method", "target", "sparsity", "teacher",
                     "stages", "vocab_size", "tokens", "bogus"]),
    st.sampled_from(["prune", "finetune", "distill", "export", "eval", "quantize", "width",
                     "depth", "base", 0.5, 2.0, -1, "90M", None, [], {}, "nan"]) | json_scalar,
    max_size=4), max_size=4)
recipes = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["r", "bad name", ""]) | text, "base": st.just("tiny:llama") | text,
    "data": st.just("python-docs") | text, "steps": steps | json_value, "seed": json_value,
    "sample_tokens": json_value, "compare_to": json_value, "extra": json_value})


@SETTINGS
@given(data=recipes)
def test_recipe_loader_accepts_or_names_the_field(data):
    try:
        recipe = parse_recipe(data, Located("r.yaml", {}), check_files=False)
    except SlmError as exc:
        assert exc.one_line().startswith("r.yaml"), exc.one_line()
        return
    assert recipe.steps


@SETTINGS
@given(body=text | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_recipe_file_of_any_text(tmp_path, body):
    path = tmp_path / "r.yaml"
    path.write_text(body, encoding="utf-8")
    try:
        load_recipe(path, check_files=False)
    except SlmError as exc:
        assert "\n" not in exc.one_line()


@SETTINGS
@given(value=text | st.floats() | st.integers())
def test_target_parser(value):
    try:
        got = units.fraction_or_count(value)
    except ValueError:
        return
    assert (isinstance(got, float) and 0 < got < 1) or (isinstance(got, int) and got >= 1)
    if isinstance(value, float) and value >= 1:
        pytest.fail(f"{value} read as a count")


def test_yaml_tags_are_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nbase: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(SlmError, match="not valid YAML"):
        load_recipe(path, check_files=False)
    assert yaml.safe_load("a: 1") == {"a": 1}
