"""Perplexity, multiple-choice scoring, speed and text streaming."""
import json
import math

import pytest
import torch

from slmkit.engines import GenStats, open_engine, stream_text
from slmkit.engines.base import sample
from slmkit.evaluate import accuracy, measure_speed, perplexity, read_task
from slmkit.evaluate.choice import choice_loglik
from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_slm


@pytest.fixture(scope="module")
def engine():
    return open_engine(tiny_slm("llama", seed=1))


def test_perplexity_one_window_equals_model_loss(engine):
    ids = list(range(10, 200))
    r = perplexity(engine, ids, max_length=512, stride=512, progress=False)
    with torch.no_grad():
        loss = engine.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert r["tokens"] == len(ids) - 1
    assert math.isclose(r["nll"], loss, rel_tol=1e-5)


def test_sliding_window_scores_every_token_once(engine):
    ids = list(range(10, 300))
    disjoint = perplexity(engine, ids, max_length=64, stride=64, progress=False)
    sliding = perplexity(engine, ids, max_length=64, stride=16, progress=False)
    assert sliding["tokens"] == len(ids) - 1
    assert disjoint["tokens"] == len(ids) - 5        # each disjoint window's first is context
    # more context per scored token than disjoint chunks give
    assert sliding["nll"] != disjoint["nll"]
    # a window longer than the text: every window starts at 0, so any stride
    # must give exactly the single-pass loss
    whole = perplexity(engine, ids, max_length=512, stride=512, progress=False)
    strided = perplexity(engine, ids, max_length=512, stride=37, progress=False)
    assert strided["tokens"] == whole["tokens"]
    assert math.isclose(strided["nll"], whole["nll"], rel_tol=1e-5)
    with pytest.raises(SlmError, match="stride"):
        perplexity(engine, ids, max_length=64, stride=128, progress=False)


class Biased:
    """A fake engine that always prefers token ``fav``."""

    context_length = 64
    eos_ids = {0}

    def __init__(self, fav):
        self.fav = fav

    def tokenize(self, text, special=True):
        return [ord(c) % 50 + 1 for c in text]

    def logits(self, ids):
        out = torch.zeros(len(ids), 60)
        out[:, self.fav] = 5.0
        return out


def test_multiple_choice_picks_likeliest(tmp_path):
    f = tmp_path / "task.jsonl"
    # ' ' -> 33, 'A' -> 16, 'B' -> 17 under Biased.tokenize
    f.write_text("\n".join(json.dumps(r) for r in [
        {"question": "q1", "choices": ["A", "B"], "answer": 0},
        {"question": "q2", "choices": ["B", "A"], "answer": "A"},
        {"question": "q3", "choices": ["A", "B"], "answer": "B"},
    ]))
    recs = read_task(f)
    assert [r["answer"] for r in recs] == [0, 1, 1]
    r = accuracy(Biased(16), recs, progress=False)
    assert r["n"] == 3 and r["acc"] == pytest.approx(2 / 3) and r["acc_norm"] == pytest.approx(2 / 3)
    assert accuracy(Biased(17), recs, progress=False)["acc"] == pytest.approx(1 / 3)


def test_choice_loglik_matches_manual(engine):
    ctx, choice = "Question: what?\nAnswer:", "yes indeed"
    got = choice_loglik(engine, ctx, choice)
    a, b = engine.tokenize(ctx), engine.tokenize(" " + choice, special=False)
    logp = torch.log_softmax(engine.logits(a + b), -1)
    want = sum(logp[len(a) - 1 + i, t].item() for i, t in enumerate(b))
    assert got == pytest.approx(want, rel=1e-5)


def test_bad_task_file(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"question": "q", "choices": ["a"]}\n')
    with pytest.raises(SlmError, match="t.jsonl:1"):
        read_task(f)


def test_greedy_stream_matches_argmax_and_stops(engine):
    stats = GenStats()
    text = "".join(stream_text(engine, "def f(x):", max_tokens=12, temperature=0, stats=stats,
                               ignore_eos=True))
    ids = engine.tokenize("def f(x):")
    want = []
    for _ in range(12):
        with torch.no_grad():
            want.append(int(engine.model(torch.tensor([ids + want])).logits[0, -1].argmax()))
    assert stats.token_ids == want
    assert text == engine.detokenize(want)
    if len(text) > 3:
        stop = text[2:4]
        cut = "".join(stream_text(engine, "def f(x):", max_tokens=12, temperature=0,
                                  stop=[stop], ignore_eos=True))
        assert cut == text[: text.find(stop)]


def test_seeded_sampling_repeats(engine):
    a = "".join(stream_text(engine, "x", max_tokens=10, temperature=1.0, seed=7, ignore_eos=True))
    b = "".join(stream_text(engine, "x", max_tokens=10, temperature=1.0, seed=7, ignore_eos=True))
    assert a == b


def test_top_p_keeps_only_nucleus():
    logits = torch.tensor([10.0, 9.0, -10.0, -10.0])
    g = torch.Generator().manual_seed(0)
    picks = {sample(logits, 1.0, 0.5, g) for _ in range(50)}
    assert picks == {0}


def test_speed_reports_exact_token_count(engine):
    r = measure_speed(engine, list(range(10, 42)), gen_tokens=8, repeats=1)
    assert r["gen_tokens"] == 8 and r["prompt_tokens"] == 32
    assert r["decode_tok_s"] > 0 and r["ttft_s"] > 0
