"""The CUDA path: generation, a LoRA run, a GPTQ layer, a distillation run and Wanda's
calibration on one GPU, each checked against the same work on the CPU where the two
must agree. Skipped without CUDA (marker ``gpu``); ``bench/cuda_check.sh`` runs them."""
import json

import pytest
import torch

import slmkit
from slmkit.models.tiny import tiny_slm

pytestmark = pytest.mark.gpu


def _docs(tmp_path):
    from slmkit.data.corpora import python_docs
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in python_docs()[:60]))
    return path


@pytest.fixture
def base(tmp_path):
    return slmkit.save(tiny_slm("llama"), tmp_path / "base")


def test_greedy_generation_matches_cpu(base):
    from slmkit.engines import generate_text, open_engine
    cpu = open_engine(str(base), "pytorch", device="cpu")
    gpu = open_engine(str(base), "pytorch", device="cuda")
    assert gpu.device.type == "cuda"
    a, _ = generate_text(cpu, "def main():", max_tokens=24, temperature=0, ignore_eos=True)
    b, _ = generate_text(gpu, "def main():", max_tokens=24, temperature=0, ignore_eos=True)
    assert a == b
    ids = cpu.tokenize("The function returns a list of values.")
    assert torch.allclose(cpu.logits(ids), gpu.logits(ids), atol=1e-3)


def test_lora_run_on_cuda(base, tmp_path):
    from slmkit.tune.finetune import FinetuneConfig, run_finetune
    cfg = FinetuneConfig(data=str(_docs(tmp_path)), method="lora", rank=8, lr=3e-3, seq_len=64,
                         batch_size=4, max_tokens=64 * 4 * 20, max_val_blocks=8, patience=0,
                         device="cuda")
    rep = run_finetune(str(base), tmp_path / "ft", cfg, progress=False)
    assert rep["steps"] == 20
    assert rep["val_loss_after"] < rep["val_loss_before"] - 0.05
    assert (tmp_path / "ft" / "adapter" / "adapter_model.safetensors").exists()


def test_gptq_on_cuda_matches_cpu_error(base, tmp_path):
    from slmkit.compress.quantize import QuantizeConfig, run_quantize
    kw = dict(method="gptq", bits=4, group_size=32, calib=str(_docs(tmp_path)),
              calib_samples=8, seq_len=64, eval_tokens=256, speed_tokens=0)
    cpu = run_quantize(str(base), tmp_path / "qc", QuantizeConfig(device="cpu", **kw))
    gpu = run_quantize(str(base), tmp_path / "qg", QuantizeConfig(device="cuda", **kw))
    assert gpu["mean_output_rel_error"] < gpu["mean_rtn_output_rel_error"]
    assert gpu["mean_output_rel_error"] == pytest.approx(cpu["mean_output_rel_error"], rel=0.05)
    assert gpu["after"]["ppl"] == pytest.approx(cpu["after"]["ppl"], rel=0.02)


def test_distill_run_on_cuda(tmp_path):
    from slmkit.compress.distill import DistillConfig, run_distill
    slmkit.save(tiny_slm("llama", seed=0), tmp_path / "teacher")
    slmkit.save(tiny_slm("llama", seed=1, num_hidden_layers=1), tmp_path / "student")
    cfg = DistillConfig(teacher=str(tmp_path / "teacher"), data=str(_docs(tmp_path)),
                        tokens=4096, seq_len=32, batch_size=4, lr=3e-3, warmup_steps=2,
                        ckpt_every=0, val_tokens=512, w_hidden=0.5, device="cuda")
    rep = run_distill(str(tmp_path / "student"), tmp_path / "out", cfg, progress=False)
    assert rep["teacher_unchanged"] is True
    assert rep["val_ppl"] < rep["val_ppl_before"]


def test_wanda_calibrates_on_cuda(base, tmp_path):
    from slmkit.compress.prune import PruneConfig, run_prune
    kw = dict(method="wanda", sparsity=0.5, calib=str(_docs(tmp_path)), nsamples=8, seqlen=64,
              eval_tokens=0, overwrite=True)
    run_prune(str(base), tmp_path / "pc", PruneConfig(device="cpu", **kw))
    run_prune(str(base), tmp_path / "pg", PruneConfig(device="cuda", **kw))
    a = slmkit.load(tmp_path / "pc").model.model.layers[0].mlp.down_proj.weight
    b = slmkit.load(tmp_path / "pg").model.model.layers[0].mlp.down_proj.weight
    assert (a == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    assert ((a == 0) == (b == 0)).float().mean() > 0.98       # the same weights, bar ties
