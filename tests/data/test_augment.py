"""EDA augmentation: WordNet lookup, each operation, protected spans, JSONL, CLI."""
import json
import random

import pytest

from slmkit.data.augment import (AugmentConfig, augment_records, eda_text, looks_like_code,
                                 random_deletion, random_insertion, random_swap,
                                 synonym_replacement, tokenize, detokenize, wordnet)
from slmkit.errors import SlmError

SENTENCE = "The quick brown dog jumps over the lazy fox near the river bank"


@pytest.fixture(scope="module")
def wn():
    return wordnet()


def _words(text):
    return text.split()


def test_wordnet_synonyms_from_debian_files(wn):
    assert "domestic dog" in wn.synonyms("dog")
    assert {"speedy", "fast"} <= set(wn.synonyms("quick"))
    assert "dog" not in wn.synonyms("dog")
    assert wn.synonyms("xqzzyv") == ()


def test_synonym_replacement_swaps_words_for_synonyms(wn):
    toks = tokenize(SENTENCE)
    n = synonym_replacement(toks, 3, random.Random(0), wn)
    out = _words(detokenize(toks))
    before = _words(SENTENCE)
    assert n == 3
    changed = [(a, b) for a, b in zip(before, out) if a != b]
    # multi-word synonyms add words, so compare on tokens instead
    new_cores = [t.core for t in toks if t.editable]
    diff = [(a, b) for a, b in zip(before, new_cores) if a != b]
    assert len(diff) == 3 and changed
    for old, new in diff:
        assert new.lower() in wn.synonyms(old)


def test_random_insertion_adds_synonyms(wn):
    toks = tokenize(SENTENCE)
    n = random_insertion(toks, 2, random.Random(1), wn)
    inserted = [t.core for t in toks if t.editable][:]
    assert n == 2
    base = _words(SENTENCE)
    added = list(inserted)
    for w in base:
        added.remove(w)
    assert len(added) == 2
    pool = {s for w in base for s in wn.synonyms(w)}
    assert all(a in pool for a in added)


def test_random_swap_keeps_the_words():
    toks = tokenize(SENTENCE)
    random_swap(toks, 2, random.Random(2))
    out = detokenize(toks)
    assert out != SENTENCE
    assert sorted(w.lower() for w in _words(out)) == sorted(w.lower() for w in _words(SENTENCE))


def test_random_deletion_removes_words_in_order():
    toks = tokenize(SENTENCE)
    n = random_deletion(toks, 0.3, random.Random(3))
    out = _words(detokenize(toks))
    assert n > 0 and len(out) == len(_words(SENTENCE)) - n
    it = iter(_words(SENTENCE))
    assert all(w in it for w in out)        # a subsequence: order kept


def test_deterministic_under_seed():
    recs = [{"text": SENTENCE, "id": "a"}, {"text": "Sorting a list is stable in Python", "id": "b"}]
    a, _ = augment_records(recs, AugmentConfig(n=4, seed=7))
    b, _ = augment_records(recs, AugmentConfig(n=4, seed=7))
    c, _ = augment_records(recs, AugmentConfig(n=4, seed=8))
    assert a == b
    assert a != c


CODE_TEXT = """Call `os.path.join(a, b)` to build the path described at https://docs.python.org/3/library/os.path.html today.
The function returns 42 items or 3.14 seconds for every single value.

    for item in items:
        print(item)

```
x = compute(values)
```
>>> sorted([3, 1, 2])
result = value * 2
Finally the quick brown dog sleeps under the warm summer sun again."""

PROTECTED = ["`os.path.join(a, b)`", "https://docs.python.org/3/library/os.path.html", "42", "3.14",
             "    for item in items:\n        print(item)\n", "```\nx = compute(values)\n```\n",
             ">>> sorted([3, 1, 2])\n", "result = value * 2\n"]


@pytest.mark.parametrize("op", ["sr", "ri", "rs", "rd"])
def test_code_urls_numbers_untouched(op, wn):
    for seed in range(5):
        out, k = eda_text(CODE_TEXT, op, 0.5, random.Random(seed), wn)
        assert k > 0 and out != CODE_TEXT
        for span in PROTECTED:
            assert out.count(span) == CODE_TEXT.count(span), (op, span)


def test_code_line_detection():
    assert looks_like_code("    return x")
    assert looks_like_code("x = foo(bar)")
    assert looks_like_code(">>> import os")
    assert looks_like_code("if (a[i] == b[j]) { c++; }")
    assert not looks_like_code("The value of x is returned when the call ends.")


def test_jsonl_only_text_fields_change(tmp_path):
    from slmkit.data.augment import AugmentConfig, run_augment
    src = tmp_path / "in.jsonl"
    recs = [{"prompt": "Explain how the quick sorting routine orders a large list",
             "response": "It compares adjacent items and moves the larger item later",
             "label": "keep me", "score": 5},
            {"messages": [{"role": "system", "content": "You are a careful helpful assistant"},
                          {"role": "user", "content": "Describe the large brown dog"},
                          {"role": "assistant", "content": "The dog is big and quite friendly"}]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = run_augment(src, tmp_path / "out.jsonl", AugmentConfig(n=4, alpha=0.3, seed=1))
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rep["records_in"] == 2 and rep["records_out"] == len(out) == 10
    assert sum(rep["copies"].values()) == 8 and all(v > 0 for v in rep["words_changed"].values())
    copies = [r for r in out if "augmented" in r]
    assert len(copies) == 8 and out[0] == recs[0]      # originals come back exactly as written
    for r in copies:
        assert set(r) <= {"prompt", "response", "label", "score", "messages", "augmented"}
        if "prompt" in r:
            assert r["label"] == "keep me" and r["score"] == 5
            assert (r["prompt"], r["response"]) != (recs[0]["prompt"], recs[0]["response"])
        else:
            assert r["messages"][0] == recs[1]["messages"][0]          # system prompt kept
            assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]


def _cli(*argv) -> int:
    from slmkit.cli import main
    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_cli_augment_and_bad_jsonl(tmp_path, capsys):
    good = tmp_path / "d.txt"
    good.write_text("The quick brown dog jumps over the lazy fox.\n\nA small cat sleeps on the mat.\n")
    assert _cli("augment", str(good), "--n", "2", "--out", str(tmp_path / "o.jsonl"),
                "--seed", "1", "--json") == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["records_in"] == 1 and rep["records_out"] == 3
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    assert _cli("augment", str(bad), "--out", str(tmp_path / "x.jsonl")) == 2
    assert "bad.jsonl:2" in capsys.readouterr().out
    assert not (tmp_path / "x.jsonl").exists()


def test_unknown_operation():
    with pytest.raises(SlmError, match="unknown EDA operation"):
        eda_text(SENTENCE, "zz", 0.1, random.Random(0))
    with pytest.raises(ValueError):
        AugmentConfig(ops=["zz"])
