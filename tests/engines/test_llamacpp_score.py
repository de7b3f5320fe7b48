"""Batched scoring on llama.cpp: several questions per decode call, each choice its own
KV-cache sequence sharing its question's prefix cells, gives the scores of one pass
per choice."""
import json
import random

import pytest

from slmkit.engines import open_engine
from slmkit.evaluate import tasks as T
from slmkit.evaluate.loglik import score_questions
from slmkit.export import ExportConfig, run_export
from slmkit.models.tiny import tiny_slm

WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "river", "stone",
         "a small brown house", "seven", "the end of the road", "42", "yes", "no"]


@pytest.fixture(scope="module")
def cpp(tmp_path_factory):
    path = tmp_path_factory.mktemp("score") / "t.gguf"
    run_export(tiny_slm("llama", seed=3, initializer_range=0.3), path,
               ExportConfig(type="f32", parity_tokens=0))
    return open_engine(str(path), "llama.cpp", n_ctx=256, logits_all=True)


def _questions(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = "Question: " + " ".join(rng.choices(WORDS, k=rng.randint(1, 12))) + "?\nAnswer:"
        out.append([(q, " " + c) for c in rng.sample(WORDS, rng.randint(2, 5))])
    out.append([("The cat sat on the mat because the cat", " was tired."),     # Winogrande-like
                ("The cat sat on the mat because the mat", " was tired.")])
    out.append([("Alpha", " beta"), ("Gamma", " beta")])                       # no shared prefix
    return out


def test_batched_equals_one_pass_per_choice(cpp):
    qs = _questions(40)
    fast = score_questions(cpp, qs, batch=True)
    slow = score_questions(cpp, qs, naive=True)
    calls = cpp._scorer.decode_calls
    assert 1 < calls < len(qs) / 4                    # several questions per call
    for f, s in zip(fast, slow):
        assert f == pytest.approx(s, rel=1e-4, abs=1e-4)
    assert [max(range(len(f)), key=f.__getitem__) for f in fast] == \
           [max(range(len(s)), key=s.__getitem__) for s in slow]
    # the per-question path (prompt shared, one question per call) agrees too
    one = score_questions(cpp, qs, batch=False)
    for f, o in zip(fast, one):
        assert f == pytest.approx(o, rel=1e-4, abs=1e-4)


def test_packing_limits_and_oversized_questions(cpp):
    from slmkit.engines.llamacpp_score import LlamaCppScorer
    small = LlamaCppScorer(cpp, n_tokens=200, n_seq=12)
    items = [(cpp.tokenize(q[0][0]), [cpp.tokenize(c, special=False) for _, c in q])
             for q in _questions(12, seed=1)]
    items.append((cpp.tokenize("word " * 75), [[5, 6], [7]]))       # over n_tokens: a call alone
    items.append(([1, 2, 3], [[i + 4] for i in range(16)]))         # over n_seq: scored alone
    got = small.score(items)
    packed = items[:-1]
    sizes = [LlamaCppScorer.size(i) for i in packed]
    assert sizes[-1] > 200 and max(sizes[:-1]) < 100
    assert sum(sizes) / 200 <= small.decode_calls < len(packed) / 2
    assert small.tokens_read == sum(sizes)
    for g, item in zip(got, items):
        want = cpp.score_suffixes(*item)
        assert len(g) == len(want)
        for x, y in zip(g, want):
            assert x.tolist() == pytest.approx(y.tolist(), rel=1e-4, abs=1e-4)


def test_task_accuracy_equal_batched_and_naive(cpp, tmp_path):
    f = tmp_path / "quiz.jsonl"
    rng = random.Random(2)
    f.write_text("\n".join(json.dumps({"question": " ".join(rng.sample(WORDS, 4)),
                                       "choices": rng.sample(WORDS, 3),
                                       "answer": rng.randrange(3)}) for i in range(50)))
    task = T.resolve_tasks(str(f))[0]
    fast = T.score_task(cpp, task, batch=True, progress=False)
    slow = T.score_task(cpp, task, naive=True, progress=False)
    assert (fast["acc"], fast["acc_norm"]) == (slow["acc"], slow["acc_norm"])
    assert fast["n"] == 50
