"""Faults mid-run: ``slm finetune``, ``slm distill`` and ``slm build`` are SIGKILLed during a
training step, during a checkpoint write and during the final save, then run again with the
same command. The rerun says it resumes, continues the step counter from the newest complete
checkpoint, finishes, and ends with the figures of an unbroken run.

Tolerance: none. On one thread with fixed seeds a resumed run reads the same batches in the
same order from the same weights, optimizer moments and RNG state, so its loss curve, its
validation figures and its saved weights are bit-identical to the unbroken run's; the tests
compare them with ``==``.

Each command runs in its own process (``kill_run.py``), and the kill is a real SIGKILL.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import slmkit
from slmkit.models.tiny import tiny_slm

KILLER = Path(__file__).with_name("kill_run.py")
SRC = Path(slmkit.__file__).resolve().parents[1]
TEXT = "\n\n".join(f"Section {i}. The function returns a list of {i % 7} values and raises "
                   f"ValueError when the argument {i % 5} is empty." for i in range(160))


def slm(rule: str, *argv, cwd: Path) -> subprocess.CompletedProcess:
    """``slm ARGV`` in a fresh process, SIGKILLed where ``rule`` says (kill_run.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(KILLER), rule, *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def killed(proc: subprocess.CompletedProcess, where: str) -> None:
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"killed: {where}" in proc.stderr


def finished(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def weights(d: Path) -> dict:
    return {p.name: load_file(p) for p in sorted(d.rglob("*.safetensors"))}


def same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa and wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for k in wa[name]:
            assert wa[name][k].equal(wb[name][k]), f"{name}:{k}"


def losses(report: dict) -> list[float]:
    return [r["loss"] for r in report["loss_curve"]]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    slmkit.save(tiny_slm("llama", seed=0), root / "teacher")
    slmkit.save(tiny_slm("llama", seed=1, num_hidden_layers=1), root / "student")
    (root / "doc.txt").write_text(TEXT)
    return root


# ---------------------------------------------------------------- slm finetune

# Planned 50 steps of 16 tokens, evaluated every 6; early stopping (patience 2) ends the run at
# step 30 with the best validation loss at step 18, so the best weights, the best loss and the
# patience count have to come back from the checkpoint (at step 25, and the last at step 30).
FINETUNE = ["finetune", "teacher", "--data", "doc.txt", "--seq-len", "16", "--batch-size", "1",
            "--max-tokens", "800", "--lr", "0.03", "--rank", "4", "--patience", "2"]


@pytest.fixture(scope="module")
def finetune_ref(space):
    finished(slm("none", *FINETUNE, "--out", "ft-ref", cwd=space))
    ref = json.loads((space / "ft-ref" / "report.json").read_text())
    assert (ref["steps"], ref["planned_steps"], ref["best_step"]) == (30, 50, 18), \
        [(e["step"], e["val_loss"]) for e in ref["eval_curve"]]
    return ref


@pytest.mark.parametrize("rule, where, resumed", [
    ("step=28", "optimizer step 28", 25),
    ("ckpt=2", "checkpoint write 2 (.step-0000030", 25),
    ("save=adapter_model", "final save", 30),
], ids=["during-step", "during-checkpoint", "during-final-save"])
def test_finetune_resumes_after_sigkill(space, finetune_ref, rule, where, resumed):
    out = f"ft-{rule.split('=')[0]}"
    killed(slm(rule, *FINETUNE, "--out", out, cwd=space), where)
    assert not (space / out).exists()
    ckpts = space / f"{out}.partial" / "checkpoints"
    assert (ckpts / f"step-{resumed:07d}" / "state.json").exists()
    log = finished(slm("none", *FINETUNE, "--out", out, cwd=space))
    assert f"resuming from step {resumed} of 50" in log
    assert not (space / f"{out}.partial").exists()             # checkpoints and temps gone
    rep = json.loads((space / out / "report.json").read_text())
    assert rep["resumed_from"] == resumed and rep["steps"] == 30 and rep["stopped_early"]
    assert [r["step"] for r in rep["loss_curve"]] == list(range(1, 31))
    assert losses(rep) == losses(finetune_ref)
    assert rep["eval_curve"] == finetune_ref["eval_curve"]
    for k in ("val_loss_before", "val_loss_after", "val_ppl_after", "best_step"):
        assert rep[k] == finetune_ref[k], k
    same_weights(space / out, space / "ft-ref")                # the best (step 18) weights


# ---------------------------------------------------------------- slm distill

# 32 steps of 2 x 16 tokens; checkpoints every 10 steps and at the end (step 32).
DISTILL = ["distill", "--teacher", "teacher", "--student", "student", "--data", "doc.txt",
           "--tokens", "1024", "--seq-len", "16", "--batch-size", "2", "--lr", "3e-3",
           "--warmup", "2", "--ckpt-every", "10", "--val-tokens", "256", "--w-hidden", "0.5"]


@pytest.fixture(scope="module")
def distill_ref(space):
    finished(slm("none", *DISTILL, "--out", "kd-ref", cwd=space))
    return json.loads((space / "kd-ref" / "report.json").read_text())


@pytest.mark.parametrize("rule, where, resumed", [
    ("step=15", "optimizer step 15", 10),
    ("ckpt=2", "checkpoint write 2 (.step-0000020", 10),
    ("save=model.safetensors", "final save", 32),
], ids=["during-step", "during-checkpoint", "during-final-save"])
def test_distill_resumes_after_sigkill(space, distill_ref, rule, where, resumed):
    out = f"kd-{rule.split('=')[0]}"
    killed(slm(rule, *DISTILL, "--out", out, cwd=space), where)
    assert not (space / out).exists()
    ckpts = space / f"{out}.partial" / "checkpoints"
    assert (ckpts / f"step-{resumed:07d}" / "state.json").exists()
    log = finished(slm("none", *DISTILL, "--out", out, cwd=space))
    assert f"resuming from step {resumed} of 32" in log
    assert not (space / f"{out}.partial").exists()
    rep = json.loads((space / out / "report.json").read_text())
    assert rep["resumed_from"] == resumed and rep["steps"] == 32
    assert [r["step"] for r in rep["loss_curve"]] == list(range(1, 33))
    assert losses(rep) == losses(distill_ref)
    for k in ("val_ppl_before", "val_ppl", "final_loss"):
        assert rep[k] == distill_ref[k], k
    same_weights(space / out, space / "kd-ref")


# ---------------------------------------------------------------- slm build

# finetune: 50 steps, checkpoint writes 1 (step 25) and 2 (end); prune: no training;
# distill: 20 steps, checkpoint writes 3-6 (steps 5, 10, 15 and the end).
RECIPE = """name: kill
base: tiny:llama
data: doc.txt
general_data: null
prompts: null
steps:
  - step: finetune
    method: lora
    max_tokens: 800
    seq_len: 16
    batch_size: 1
    lr: 0.005
    rank: 4
    patience: 0
    max_val_blocks: 4
  - step: prune
    method: width
    target: 0.6
    nsamples: 4
    seqlen: 16
    eval_tokens: 128
  - step: distill
    teacher: finetune
    tokens: 640
    seq_len: 16
    batch_size: 2
    ckpt_every: 5
    val_tokens: 256
  - step: eval
    max_eval_tokens: 256
    max_length: 64
    stride: 32
    speed: false
    isolate: false
"""
TRAINED = ("01-finetune", "03-distill")


def figures(report: dict) -> dict:
    """What a build measured (its timings aside)."""
    keep = ("stage", "params", "bytes", "ppl", "ppl_bpb", "ppl_tokens", "ppl_ref_tokens",
            "ppl_own_tokens", "tokens_per_char")
    return {"stages": [{k: r.get(k) for k in keep} for r in report["stages"]],
            "loss_curves": report["loss_curves"]}


@pytest.fixture(scope="module")
def build_ref(space):
    (space / "kill.yaml").write_text(RECIPE.replace("doc.txt", str(space / "doc.txt")))
    finished(slm("none", "build", "kill.yaml", "--out", "build-ref", cwd=space))
    return json.loads((space / "build-ref" / "report.json").read_text())


@pytest.mark.parametrize("rule, where, step, resumed, skipped", [
    ("step=30", "optimizer step 30", "finetune", "25 of 50", []),
    ("ckpt=4", "checkpoint write 4 (.step-0000010", "distill", "5 of 20", ["finetune", "prune"]),
    ("save=03-distill", "final save", "distill", "20 of 20", ["finetune", "prune"]),
], ids=["during-step", "during-checkpoint", "during-final-save"])
def test_build_resumes_after_sigkill(space, build_ref, rule, where, step, resumed, skipped):
    out = space / f"build-{rule.split('=')[0]}"
    killed(slm(rule, "build", "kill.yaml", "--out", out, cwd=space), where)
    assert not (out / "report.json").exists()
    log = finished(slm("none", "build", "kill.yaml", "--out", out, cwd=space))
    assert f"resuming from step {resumed}" in log
    rep = json.loads((out / "report.json").read_text())
    status = {s["name"]: s["status"] for s in rep["steps"]}
    assert [n for n in ("finetune", "prune", "distill") if status[n] == "skipped"] == skipped
    assert status[step] == "ran" and status["eval"] == "ran"
    ran = next(s for s in rep["steps"] if s["name"] == step)
    made = json.loads((Path(ran["dir"]) / "report.json").read_text())
    assert made["resumed_from"] == int(resumed.split()[0])
    assert figures(rep) == figures(build_ref)
    for d in TRAINED:
        same_weights(out / d, space / "build-ref" / d)
    assert not any((out / ".work").iterdir())          # no checkpoints or temps left
