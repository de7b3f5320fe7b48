"""Reading, splitting and packing data."""
import json

import pytest
import torch

from slmkit import data
from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_tokenizer


def test_python_docs_corpus_and_deterministic_split():
    recs = data.read_records("python-docs")
    assert len(recs) > 200 and all(r["text"].strip() for r in recs)
    tr1, va1 = data.split(recs, 0.1)
    tr2, va2 = data.split(list(reversed(recs)), 0.1)
    assert {r["id"] for r in va1} == {r["id"] for r in va2}      # order-independent
    assert not {r["id"] for r in tr1} & {r["id"] for r in va1}
    assert 0.05 < len(va1) / len(recs) < 0.15


def test_file_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"text": "plain"},
        {"prompt": "Q?", "response": "A."},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]))
    recs = data.read_records(tmp_path)
    assert len(recs) == 4
    tok = tiny_tokenizer()
    assert "<|im_start|>assistant\nyo" in data.record_text(recs[-1], tok)


def test_bad_jsonl_names_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ok"}\n{"oops": 1}\n')
    with pytest.raises(SlmError, match=r"d.jsonl:2"):
        data.read_records(f)
    f.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(SlmError, match=r"d.jsonl:2: not valid JSON"):
        data.read_records(f)


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(SlmError, match="empty"):
        data.read_records(tmp_path / "e.txt")
    with pytest.raises(SlmError, match="not found"):
        data.read_records(tmp_path / "missing.txt")


def test_pack_blocks():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    b = data.pack(docs, 4)
    assert b.shape == (2, 4) and b.dtype == torch.long
    assert b.flatten().tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(SlmError, match="fewer than one block"):
        data.pack([[1, 2]], 4)
    tok = tiny_tokenizer()
    blocks = data.blocks("python-docs", tok, 64, "val", max_blocks=5)
    assert blocks.shape == (5, 64)
