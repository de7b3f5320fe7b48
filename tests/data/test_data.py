"""Reading, splitting and packing data."""
import json

import pytest
import torch

from slmkit import data
from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_tokenizer


def test_python_docs_corpus_and_deterministic_split():
    from pydoc_data.topics import topics
    recs = data.read_records("python-docs")
    assert len(recs) == len([t for t in topics.values() if t.strip()])   # a topic is a document
    assert {r["id"] for r in recs} <= set(topics)
    assert all(r["text"] == topics[r["id"]].strip() for r in recs)
    tr1, va1 = data.split(recs, 0.1)
    tr2, va2 = data.split(list(reversed(recs)), 0.1)
    assert {r["id"] for r in va1} == {r["id"] for r in va2}      # order-independent
    assert not {r["id"] for r in tr1} & {r["id"] for r in va1}
    assert len(tr1) + len(va1) == len(recs)                      # whole topics held out
    assert 0.03 < len(va1) / len(recs) < 0.2


def test_text_file_is_one_document_with_one_eos(tmp_path):
    text = "\n\n".join(f"Paragraph {i}: " + "words and more words " * 40 for i in range(30))
    (tmp_path / "a.md").write_text(text)
    (tmp_path / "b.txt").write_text("A second, short file.\n")
    recs = data.read_records(tmp_path)
    assert [r["text"] for r in recs] == [text, "A second, short file.\n"]
    tok = tiny_tokenizer()
    ids = [t for d in data.tokenize_records(recs, tok) for t in d]
    assert ids.count(tok.eos_token_id) == 2                      # between files only
    assert ids.index(tok.eos_token_id) == len(tok(text, add_special_tokens=False)["input_ids"])
    # a long document runs across blocks with no boundary invented
    blocks = data.pack(data.tokenize_records(recs[:1], tok), 64)
    assert len(blocks) > 10 and (blocks[:-1] != tok.eos_token_id).all()


def test_single_file_split_cuts_at_a_line_break(tmp_path):
    lines = [f"line {i} " + "x" * (i % 17) for i in range(400)]
    text = "\n".join(lines) + "\n"
    f = tmp_path / "notes.txt"
    f.write_text(text)
    train, val = data.split(data.read_records(f), 0.1)
    assert len(train) == len(val) == 1
    assert train[0]["text"] + val[0]["text"] == text            # nothing lost, nothing added
    assert train[0]["text"].endswith("\n") and val[0]["text"].startswith("line ")
    assert 0.08 < len(val[0]["text"]) / len(text) < 0.12
    assert data.load_split(f, "val") == val and data.load_split(f, "train") == train
    assert data.load_split(f, "all")[0]["text"] == text
    # a file with no line breaks is cut at whitespace; a one-word file still gives both
    f.write_text("word " * 200)
    tr, va = data.split(data.read_records(f), 0.2)
    assert tr[0]["text"] + va[0]["text"] == "word " * 200 and va[0]["text"].startswith("word")
    f.write_text("abcdefghij")
    tr, va = data.split(data.read_records(f), 0.1)
    assert (tr[0]["text"], va[0]["text"]) == ("abcdefghi", "j")


def test_many_documents_are_held_out_whole(tmp_path):
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}\n" * 20)
    recs = data.read_records(tmp_path)
    train, val = data.split(recs, 0.1)
    assert len(train) + len(val) == 40 and val
    whole = {r["text"] for r in recs}
    assert all(r["text"] in whole for r in train + val)         # nothing cut
    few = recs[:5]                                               # 5 < 2 / 0.1: cut each
    train, val = data.split(few, 0.1)
    assert len(train) == len(val) == 5
    assert [a["text"] + b["text"] for a, b in zip(train, val)] == [r["text"] for r in few]


def test_few_prompt_response_records_still_give_a_val_split():
    recs = [{"prompt": f"Q{i}?", "response": f"A{i}.", "id": str(i)} for i in range(3)]
    train, val = data.split(recs, 0.1)
    assert len(val) >= 1 and len(train) + len(val) == 3
    assert data.split(recs, 0.0) == (recs, [])


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
