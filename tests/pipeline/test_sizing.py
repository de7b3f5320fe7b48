"""Recipe figures resolved from the base model and the data, and data refused as too small."""
import textwrap
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.compress.prune.vocab import select_tokens, tokenizer_json
from slmkit.data import read_records, split, tokenize_records
from slmkit.errors import SlmError
from slmkit.models.catalog import CATALOG, hf_config
from slmkit.pipeline.adapt import resolve
from slmkit.pipeline.recipe import load_recipe
from slmkit.pipeline.sizing import base_shape, open_base, resolve_target

from .own_docs import make_docs

ADAPTIVE = """\
name: t
base: tiny:llama
data: {data}
text_field: body
steps:
  - step: finetune
    max_tokens: {{share: 0.5, min: 100, max: 100000}}
    seq_len: {{min: 32, max: 512}}
    batch_size: 2
    max_val_blocks: {{share: 1, max: 3}}
  - step: prune
    name: vocab
    method: vocab
    vocab_size: {{coverage: 0.9, general: 0.5}}
  - step: prune
    method: width
    target: {{decoder: 0.5}}
    nsamples: {{share: 1, max: 4}}
    seqlen: 64
  - step: eval
    max_eval_tokens: {{share: 1, max: 100000}}
"""


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return make_docs(tmp_path_factory.mktemp("docs"), chars=40_000)


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_gemma_width_target_counts_the_decoder_only():
    """Gemma 3 270M: 63% of it is the embedding; keeping 70% of the decoder after a
    vocabulary trim to 8,192 tokens leaves 70% of its decoder layers, not of the model."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(CATALOG["gemma3-270m"]))
    shape = base_shape(model)
    assert (shape.embedding, shape.vocab, shape.hidden, shape.tied) == (
        262_144 * 640, 262_144, 640, True)
    assert shape.params == 268_098_176 and shape.decoder == 100_325_376
    target, info = resolve_target({"decoder": 0.7}, shape, vocab=8192)
    kept_decoder = target - (shape.params - shape.embedding - shape.decoder) - 8192 * 640
    assert kept_decoder == shape.decoder - int(0.3 * shape.decoder)
    assert info["params_in"] == shape.params - (262_144 - 8192) * 640


def test_resolved_figures_follow_the_rules(tmp_path, docs):
    recipe = load_recipe(write(tmp_path, ADAPTIVE.format(data=docs)))
    tok, model = open_base("tiny:llama")
    out, sizing = resolve(recipe, tok, model)
    train, val = split(read_records(f"{docs}#body"))
    n_train = sum(map(len, tokenize_records(train, tok)))
    n_val = sum(map(len, tokenize_records(val, tok)))
    assert sizing.data[f"{docs}#body"]["tokens"] == {"train": n_train, "val": n_val}
    ft, vocab, width, ev = (s.options for s in out.steps)
    seq = min(512, 1 << int(min(n_train / 8, n_val / 2)).bit_length() - 1)
    assert ft["seq_len"] == seq and ft["max_tokens"] == int(0.5 * n_train)
    assert ft["max_val_blocks"] == min(3, n_val // seq)
    assert ev["max_eval_tokens"] == n_val and width["nsamples"] == 4
    shape = base_shape(model)
    counts = sorted(Counter(t for d in tokenize_records(train, tok) for t in d).values(),
                    reverse=True)
    k = next(i for i in range(len(counts) + 1) if sum(counts[:i]) >= 0.9 * sum(counts))
    base = len(select_tokens(tokenizer_json(tok), Counter(), None))
    assert base > 0
    assert vocab["vocab_size"] == min(-(-int(base + 1.5 * k) // 64) * 64, shape.vocab - 1)
    assert width["target"] == shape.after_vocab(vocab["vocab_size"]) - int(0.5 * shape.decoder)
    listed = {(o["step"], o["option"]): o["value"] for o in sizing.options}
    assert listed[("finetune", "seq_len")] == seq and len(listed) == 7


def test_data_too_small_is_refused_with_the_minimum(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("A short note.\nAnother line of it.\n")
    recipe = load_recipe(write(tmp_path, ADAPTIVE.replace("text_field: body\n", "").format(
        data=tmp_path / "d")))
    tok, model = open_base("tiny:llama")
    with pytest.raises(SlmError, match=r"too small for step 'finetune'.*needs at least 256 "
                                       r"and 64 \(8 sequences of 32 tokens to train on, 2 "
                                       r"to validate on\)"):
        resolve(recipe, tok, model)


@pytest.mark.parametrize("value, msg", [
    ("{decoder: 1.5}", "0 < F < 1"), ("{keep: 0.5}", "'keep' is not a key"),
    ("{share: 1}", "'share' is not a key")])
def test_bad_rules_name_the_field_and_line(tmp_path, value, msg):
    text = ADAPTIVE.format(data="python-docs").replace("{decoder: 0.5}", value)
    with pytest.raises(SlmError, match=rf"r\.yaml:17: steps\.2\.target: .*{msg}"):
        load_recipe(write(tmp_path, text))


def test_one_paragraph_per_line_file_has_a_validation_split(tmp_path, docs):
    """A single .txt with a paragraph on each line (no blank lines) used to be one record and
    leave validation empty; the build now measures a held-out split of it before any step."""
    text = " ".join(p.read_text() for p in sorted(docs.glob("*.md")))
    lines = [s.strip() + "." for s in text.split(". ") if s.strip()]
    (tmp_path / "notes.txt").write_text("\n".join(lines))
    recipe = load_recipe(write(tmp_path, ADAPTIVE.replace("text_field: body\n", "").format(
        data=tmp_path / "notes.txt")))
    tok, model = open_base("tiny:llama")
    _, sizing = resolve(recipe, tok, model)
    data = sizing.data[str(tmp_path / "notes.txt")]
    assert data["records"] == {"train": 1, "val": 1}
    assert data["tokens"]["val"] > 0.05 * data["tokens"]["train"]
