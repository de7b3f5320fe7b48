"""Standard benchmarks: lm-eval's templates on the shipped data, the shared-prefix scorer,
few-shot prompts, --limit subsets, standard errors and bad input."""
import json
import math
import random

import pytest
import torch

from slmkit.engines import open_engine
from slmkit.errors import SlmError
from slmkit.evaluate import tasks as T
from slmkit.evaluate.loglik import encode_pair, score_requests
from slmkit.models.tiny import tiny_slm


# ---------------------------------------------------------------- templates, checked by hand
# Each expected string was written from lm-evaluation-harness v0.4's YAML for the task
# (doc_to_text, doc_to_choice, doc_to_target, target_delimiter " ") and the raw record.

def test_arc_easy_test_split_and_template():
    docs = T.TASKS["arc_easy"].docs()
    assert len(docs) == 2376                                       # ARC-Easy test
    assert docs[0].requests()[0] == (
        "Question: Which statement best explains why photosynthesis is the foundation of most "
        "food webs?\nAnswer:", " Sunlight is the source of energy for nearly all ecosystems.")
    assert docs[0].gold == 0 and len(docs[0].choices) == 4
    assert len(T.TASKS["arc_challenge"].docs()) == 1172


def test_hellaswag_preprocess_as_lm_eval():
    docs = T.TASKS["hellaswag"].docs()
    assert len(docs) == 10042
    assert docs[0].text == "Roof shingle removal: A man is sitting on a roof. He"
    assert docs[0].choices[3] == "starts pulling up roofing on a roof." and docs[0].gold == 3
    # a WikiHow record: "[header]"/"[step]"/"[substeps]" removed, " [title]" -> ". " (which
    # leaves lm-eval's ".." after a full stop), the leading space of a removed tag kept
    d = next(d for d in docs if d.text.startswith("Personal Care and Style: How to become a "
                                                  "fashion consultant."))
    assert d.text.startswith("Personal Care and Style: How to become a fashion consultant. "
                             "Obtain your high school diploma or ged. This job requires")
    assert d.choices[0].startswith(" Many high schools")
    assert "in your field.. Search for entry-level" in d.choices[0]
    # one pass of "  " -> " ", as lm-eval: three spaces become two
    assert T.hellaswag_preprocess("  a [title] b  [step] c ") == "a. b  c"


def test_piqa_winogrande_boolq_sciq_openbookqa_templates():
    piqa = T.TASKS["piqa"].docs()
    assert len(piqa) == 1838
    assert piqa[0].requests()[1][0] == ("Question: How do I ready a guinea pig cage for it's new "
                                        "occupants?\nAnswer:")
    assert piqa[0].requests()[1][1].startswith(" Provide the guinea pig with a cage full of a "
                                               "few inches of bedding made of ripped jeans")

    wino = T.TASKS["winogrande"].docs()
    assert len(wino) == 1267
    assert wino[0].requests() == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert wino[0].gold == 1                                       # answer "2"
    assert wino[0].example() == "Sarah was a much better surgeon than Maria so Maria always " \
                                "got the easier cases."

    boolq = T.TASKS["boolq"].docs()
    assert len(boolq) == 3270
    ctx, cont = boolq[0].requests()[0]
    assert ctx.startswith("Ethanol fuel -- All biomass goes through")     # SuperGLUE's passage
    assert ctx.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert boolq[0].choices == ("no", "yes") and boolq[0].gold == 0 and cont == " no"

    sciq = T.TASKS["sciq"].docs()
    assert len(sciq) == 1000
    assert sciq[0].requests()[3] == ("\nQuestion: Who proposed the theory of evolution by "
                                     "natural selection?\nAnswer:", " darwin")
    assert sciq[0].gold == 3

    obqa = T.TASKS["openbookqa"].docs()
    assert len(obqa) == 500
    assert obqa[0].text.startswith("A person wants to start saving money")  # question_stem only
    assert obqa[0].text.endswith("the best way to save money is to")
    assert obqa[0].choices[obqa[0].gold] == "quit eating lunch out"


def test_mmlu_template_description_and_first_n_fewshot():
    task = T.TASKS["mmlu"]
    docs = task.docs()
    assert len(docs) == 14042 and len({d.subject for d in docs}) == 57
    d = next(d for d in docs if d.subject == "anatomy")
    assert d.requests()[0] == (
        "A lesion causing compression of the facial nerve at the stylomastoid foramen will "
        "cause ipsilateral\nA. paralysis of the facial muscles.\nB. paralysis of the facial "
        "muscles and loss of taste.\nC. paralysis of the facial muscles, loss of taste and "
        "lacrimation.\nD. paralysis of the facial muscles, loss of taste, lacrimation and "
        "decreased salivation.\nAnswer:", " A")
    pools = {}
    for x in task.fewshot_docs():
        pools.setdefault(x.subject, []).append(x)
    prefix = T._fewshot(task, d, 2, pools, random.Random(0))
    dev = pools["anatomy"]
    assert prefix == ("The following are multiple choice questions (with answers) about "
                      "anatomy.\n\n" + dev[0].example() + "\n\n" + dev[1].example() + "\n\n")
    assert dev[0].example().endswith("\nAnswer: " + "ABCD"[dev[0].gold])
    with pytest.raises(SlmError, match="num-fewshot 6"):
        T._fewshot(task, d, 6, pools, random.Random(0))


def test_request_questions_match_the_raw_dataset():
    """ARC and OpenBookQA test questions are read from OLMES requests; on the validation
    split, where both forms exist, the recovered questions equal the raw records."""
    from slmkit.evaluate import task_data as D
    for raw, olmes, stem in (("ai2_arc/ARC-Easy/validation", "arc_easy/val_rc_5shot", "question"),
                             ("openbookqa/main/validation", "openbookqa/val_rc_5shot",
                              "question_stem")):
        rows, docs = D.arrow_rows(raw), D.request_docs(olmes)
        assert len(rows) == len(docs)
        for r, d in zip(rows, docs):
            assert T._strip_query(d["query"]) == r[stem]
            assert d["choices"] == r["choices"]["text"]
            assert d["gold"] == r["choices"]["label"].index(r["answerKey"].lstrip())


# ---------------------------------------------------------------- few-shot and --limit

def test_fewshot_sampling_is_seeded_and_leaves_the_question_out():
    task = T.TASKS["piqa"]
    docs = task.docs()[:40]
    small = T.Task("p", "p", "validation", "validation", "-", lambda: docs, lambda: docs,
                   "validation")
    pools = {None: docs}
    a = [T._fewshot(small, d, 3, pools, r) for r in [random.Random(1234)] for d in docs]
    b = [T._fewshot(small, d, 3, pools, r) for r in [random.Random(1234)] for d in docs]
    assert a == b
    for d, prefix in zip(docs, a):
        shots = prefix.split("\n\n")[:-1]
        assert len(shots) == 3 and d.example() not in shots
        assert all(s in {x.example() for x in docs} for s in shots)
    c = [T._fewshot(small, d, 3, pools, random.Random(7)) for d in docs]
    assert c != a
    # the draws follow lm-eval's: rnd.sample(pool, k + 1) per question, the question dropped
    rnd = random.Random(1234)
    want = [x.example() for x in rnd.sample(docs, 4) if x != docs[0]][:3]
    assert a[0] == "".join(w + "\n\n" for w in want)


def test_limit_is_a_fixed_random_subset():
    a = T.subset(2376, 100, seed=1234)
    assert a == T.subset(2376, 100, seed=1234) and a == sorted(a) and len(set(a)) == 100
    assert a != list(range(100)) and a != T.subset(2376, 100, seed=1)
    assert T.subset(10, 100) == list(range(10)) and T.subset(10, None) == list(range(10))


# ---------------------------------------------------------------- statistics

def test_stderr_is_lm_evals_mean_stderr_and_pooled():
    xs = [1.0, 0.0, 1.0, 1.0, 0.0]
    mu = 0.6
    assert T._stderr(xs) == pytest.approx(math.sqrt(sum((x - mu) ** 2 for x in xs) / 4) / math.sqrt(5))
    # pooled over equal-mean groups is close to the stderr of all items together
    g = [[1.0, 0.0] * 20, [1.0, 0.0] * 30]
    assert T._pooled_stderr(g) == pytest.approx(T._stderr(g[0] + g[1]), rel=0.02)


# ---------------------------------------------------------------- the scorer

@pytest.fixture(scope="module")
def engine():
    return open_engine(tiny_slm("llama", seed=3, initializer_range=0.3))


def test_encode_pair_splits_as_lm_eval(engine):
    ctx, cont = encode_pair(engine, "Question: why?\nAnswer: ", "because")   # trailing space moves
    whole = engine.tokenize("Question: why?\nAnswer: because")
    assert ctx == engine.tokenize("Question: why?\nAnswer:") and ctx + cont == whole[:len(ctx)] + whole[len(ctx):]
    assert cont == whole[len(ctx):]


def _requests():
    return [
        [("Question: what is two plus two?\nAnswer:", " four"),
         ("Question: what is two plus two?\nAnswer:", " five apples and a pear"),
         ("Question: what is two plus two?\nAnswer:", " 4")],
        [("The cat sat on the mat because the cat", " was tired."),      # Winogrande-like
         ("The cat sat on the mat because the mat", " was tired.")],
        [("Alpha", " beta"), ("Gamma", " beta")],                         # no shared prefix
    ]


def test_shared_prefix_equals_naive_pytorch(engine):
    for reqs in _requests():
        fast = score_requests(engine, reqs)
        slow = score_requests(engine, reqs, naive=True)
        assert fast == pytest.approx(slow, rel=1e-4, abs=1e-4)
        # and against a plain forward pass over context + continuation
        ctx, cont = encode_pair(engine, *reqs[0])
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(torch.tensor([ctx + cont])).logits[0], -1)
        want = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert fast[0] == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_shared_prefix_equals_naive_llamacpp(tmp_path):
    from slmkit.export import ExportConfig, run_export
    path = tmp_path / "t.gguf"
    run_export(tiny_slm("llama", seed=3, initializer_range=0.3), path,
               ExportConfig(type="f32", parity_tokens=0))
    cpp = open_engine(str(path), "llama.cpp", n_ctx=256, logits_all=True)
    for reqs in _requests():
        fast = score_requests(cpp, reqs)
        slow = score_requests(cpp, reqs, naive=True)
        assert fast == pytest.approx(slow, rel=1e-3, abs=1e-3)


def test_run_tasks_on_a_file_task_and_limit_determinism(engine, tmp_path):
    f = tmp_path / "quiz.jsonl"
    rng = random.Random(0)
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]
    f.write_text("\n".join(json.dumps({"question": f"Pick {i}", "choices": rng.sample(words, 3),
                                       "answer": rng.randrange(3)}) for i in range(30)))
    a = T.run_tasks(engine, str(f), limit=12, seed=5, progress=False)[str(f)]
    b = T.run_tasks(engine, [str(f)], limit=12, seed=5, progress=False)[str(f)]
    assert a["n"] == 12 and a["n_total"] == 30
    assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"])
    full = T.run_tasks(engine, str(f), progress=False)[str(f)]
    naive = T.run_tasks(engine, str(f), naive=True, progress=False)[str(f)]
    assert (full["acc"], full["acc_norm"]) == (naive["acc"], naive["acc_norm"])
    assert full["acc_stderr"] == pytest.approx(T._stderr([1.0] * round(full["acc"] * 30)
                                                         + [0.0] * round((1 - full["acc"]) * 30)))
    shots = T.run_tasks(engine, str(f), num_fewshot=2, limit=5, progress=False)[str(f)]
    assert shots["num_fewshot"] == 2 and shots["n"] == 5


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("line,match", [
    ('{"question": "q", "choices": "ab", "answer": 0}', "list of at least two strings"),
    ('{"question": "q", "choices": ["a", 3], "answer": 0}', "list of at least two strings"),
    ('{"question": "q", "choices": ["a"], "answer": 0}', "list of at least two strings"),
    ('{"question": 5, "choices": ["a", "b"], "answer": 0}', "question must be a string"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 7}', "answer 7"),
    ('{"question": "q", "choices": ["a", "b"]', "not valid JSON"),
    ('["q", ["a", "b"], 0]', "needs a JSON object"),
])
def test_bad_task_files(tmp_path, line, match):
    f = tmp_path / "t.jsonl"
    f.write_text('{"question": "ok", "choices": ["a", "b"], "answer": 0}\n' + line + "\n")
    with pytest.raises(SlmError, match=match) as e:
        T.resolve_tasks(str(f))
    assert "t.jsonl:2" in str(e.value)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(SlmError, match="unknown task 'arc_eesy'.*arc_easy, arc_challenge"):
        T.resolve_tasks("arc_easy,arc_eesy")
