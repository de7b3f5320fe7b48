"""Multiple-choice accuracy by log-likelihood, as lm-evaluation-harness scores it.

Each record is ``{"question", "choices": [...], "answer"}`` where ``answer`` is
the index of the right choice (or its text, or its letter). A choice's score is
the summed log-probability of its tokens after ``"<question>\\nAnswer:"``;
``acc`` picks the highest raw score, ``acc_norm`` the highest score per byte of
the choice text.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import SlmError
from ..progress import progress_bar


def read_task(path: str | Path) -> list[dict]:
    """Records of a multiple-choice JSONL file, with ``answer`` as an index.

    Each line must be a JSON object whose ``question`` is a string, ``choices`` a
    list of at least two strings and ``answer`` a choice index, letter or text;
    anything else is an error naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"--task: file {path} not found", "pass a JSONL file of "
                       "{question, choices, answer} records")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SlmError(f"{where}: not valid JSON ({exc.msg})", "fix that line") from exc
        if not isinstance(rec, dict) or not {"question", "choices", "answer"} <= rec.keys():
            raise SlmError(f"{where}: needs a JSON object with question, choices, answer",
                           "fix that line")
        q, choices, ans = rec["question"], rec["choices"], rec["answer"]
        if not isinstance(q, str):
            raise SlmError(f"{where}: question must be a string, not {type(q).__name__}",
                           "fix that line")
        if not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) for c in choices):
            raise SlmError(f"{where}: choices must be a list of at least two strings, "
                           f"not {json.dumps(choices)[:60]}", "fix that line")
        out.append({"question": q, "choices": choices, "answer": _index(ans, choices, where)})
    if not out:
        raise SlmError(f"task file {path} has no records", "add {question, choices, answer} lines")
    return out


def _index(ans, choices: list[str], where: str) -> int:
    if isinstance(ans, int) and not isinstance(ans, bool) and 0 <= ans < len(choices):
        return ans
    if isinstance(ans, str) and ans in choices:
        return choices.index(ans)
    if isinstance(ans, str) and len(ans) == 1 and 0 <= ord(ans.upper()) - 65 < len(choices):
        return ord(ans.upper()) - 65
    raise SlmError(f"{where}: answer {ans!r} is not a choice index, letter or text",
                   "fix that line")


def choice_loglik(engine, context: str, choice: str) -> float:
    """Summed log-probability of ``choice``'s tokens after ``context``."""
    ctx = engine.tokenize(context)
    cont = engine.tokenize(" " + choice, special=False)
    ids = (ctx + cont)[-engine.context_length:]
    logits = engine.logits(ids)                                   # (T, vocab)
    logp = torch.log_softmax(logits[-len(cont) - 1:-1].float(), dim=-1)
    return logp.gather(1, torch.tensor(ids[-len(cont):])[:, None]).sum().item()


def accuracy(engine, records: list[dict], progress: bool = True) -> dict:
    """``{"acc", "acc_norm", "n"}`` over ``records`` from :func:`read_task`."""
    hits = hits_norm = 0
    with progress_bar("multiple choice", total=len(records), enabled=progress) as bar:
        for r in records:
            ctx = f"{r['question']}\nAnswer:"
            scores = [choice_loglik(engine, ctx, c) for c in r["choices"]]
            norm = [s / max(len((" " + c).encode()), 1) for s, c in zip(scores, r["choices"])]
            hits += int(max(range(len(scores)), key=scores.__getitem__) == r["answer"])
            hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == r["answer"])
            bar.advance()
    n = len(records)
    return {"acc": hits / n, "acc_norm": hits_norm / n, "n": n}
