"""The perplexity a step reports is ``slm eval``'s on the same text and window.

Every step scores through ``evaluate.perplexity``: quantize before and after, the
teacher and the student before distillation, the validation curve of fine-tuning.
``slm eval`` run afterwards on the saved models with the options the report names
must print the same figures.
"""
import pytest
import torch

from slmkit.compress.distill import DistillConfig, run_distill
from slmkit.compress.quantize import QuantizeConfig, run_quantize
from slmkit.evaluate import EvalConfig, run_eval
from slmkit.models.io import save
from slmkit.models.tiny import tiny_slm
from slmkit.tune.finetune import FinetuneConfig, run_finetune


def _eval(models, data, max_tokens, max_length, stride) -> list[float]:
    cfg = EvalConfig(data=str(data), split="val", max_length=max_length, stride=stride,
                     max_eval_tokens=max_tokens, speed=False, isolate=False, engine="pytorch")
    return [row["ppl"] for row in run_eval([str(m) for m in models], cfg, progress=False)["models"]]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppl") / "data.txt"
    path.write_text("\n\n".join(f"Section {i}. The function returns a list of {i % 7} values "
                                f"and raises ValueError when argument {i % 5} is empty."
                                for i in range(120)))
    return path


def test_quantize_before_and_after_are_slm_eval(tmp_path):
    plain = save(tiny_slm("llama", initializer_range=0.2), tmp_path / "plain", dtype=torch.float32)
    cfg = QuantizeConfig(method="rtn", bits=4, group_size=32, seq_len=64, eval_tokens=300,
                         speed_tokens=0)
    rep = run_quantize(str(plain), tmp_path / "q4", cfg)
    t = rep["ppl_text"]
    assert (t["data"], t["split"], t["max_eval_tokens"], t["max_length"], t["stride"]) == \
        ("python-docs", "val", 300, 64, 32)
    before, after = _eval([plain, tmp_path / "q4"], t["data"], 300, 64, 32)
    assert rep["before"]["ppl"] == pytest.approx(before, abs=1e-4)
    assert rep["after"]["ppl"] == pytest.approx(after, abs=1e-4)
    assert rep["after"]["ppl"] != rep["before"]["ppl"]          # the figures can differ


def test_distill_teacher_and_before_are_slm_eval(tmp_path, text):
    teacher = save(tiny_slm("llama", seed=0), tmp_path / "teacher", dtype=torch.float32)
    student = save(tiny_slm("llama", seed=1, num_hidden_layers=1), tmp_path / "student",
                   dtype=torch.float32)
    cfg = DistillConfig(teacher=str(teacher), data=str(text), tokens=512, seq_len=32,
                        batch_size=4, lr=3e-3, warmup_steps=0, ckpt_every=0, val_tokens=400,
                        bf16=False)
    rep = run_distill(str(student), tmp_path / "out", cfg, progress=False)
    want_teacher, want_student = _eval([teacher, student], text, 400, 32, 16)
    assert rep["teacher_val_ppl"] == pytest.approx(want_teacher, rel=1e-9)
    assert rep["val_ppl_before"] == pytest.approx(want_student, rel=1e-9)


def test_finetune_val_curve_is_slm_eval_in_bf16(tmp_path, text):
    base = save(tiny_slm("llama", seed=3), tmp_path / "base", dtype=torch.float32)
    cfg = FinetuneConfig(data=str(text), method="full", seq_len=32, batch_size=4,
                         max_tokens=256, max_val_blocks=8, patience=0, lr=1e-3)
    rep = run_finetune(str(base), tmp_path / "ft", cfg, progress=False)
    assert rep["data"]["val_tokens"] == 8 * 32
    (want,) = _eval([base], text, 8 * 32, 32, 16)
    # the loop evaluates under bf16 autocast: the same tokens and windows, bf16 matmuls
    assert rep["val_ppl_before"] == pytest.approx(want, rel=0.02)
