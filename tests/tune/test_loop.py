"""The training loop: learning, schedule, exact resume, checkpoints, data parallel."""
import json
import os

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_slm
from slmkit.tune.losses import causal_lm_loss
from slmkit.tune.checkpoint import checkpoint_dirs
from slmkit.tune.loop import TrainConfig, batch_index, train
from slmkit.tune.schedule import lr_factor
from train_helpers import crash_at, free_port, one_thread, packed_batches  # noqa: F401


def _cfg(**kw):
    base = dict(lr=3e-3, warmup_steps=2, max_steps=8, ckpt_every=2, batch_size=2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_loss_and_reports(tmp_path):
    slm = tiny_slm("llama")
    report = train(slm.model, packed_batches(), causal_lm_loss, _cfg(max_steps=15, eval_every=5),
                   tmp_path, eval_fn=lambda: {"dummy": 1.0}, progress=False)
    curve = [r["loss"] for r in report.loss_curve]
    assert len(curve) == 15 and report.steps == 15
    assert curve[-1] < curve[0] - 1.0          # memorises the repeated sequences
    assert report.tokens == 15 * 2 * 32
    assert [e["step"] for e in report.eval_curve] == [0, 5, 10, 15]
    json.dumps(report.to_dict())
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-0000014", "step-0000015"]


def test_resume_reproduces_unbroken_curve(tmp_path):
    cfg = _cfg(max_steps=8, ckpt_every=3)
    full = train(tiny_slm("llama").model, packed_batches(), causal_lm_loss, cfg, tmp_path / "a",
                 progress=False)

    crashing = crash_at(6, causal_lm_loss)      # dies inside step 6, after checkpoint 3

    with pytest.raises(KeyboardInterrupt):
        train(tiny_slm("llama").model, packed_batches(), crashing, cfg, tmp_path / "b",
              progress=False)
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["step-0000003"]
    model = tiny_slm("llama", seed=1).model      # even other initial weights: state is restored
    resumed = train(model, packed_batches(), causal_lm_loss, cfg, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 3
    assert [r["loss"] for r in resumed.loss_curve] == [r["loss"] for r in full.loss_curve]


def test_resume_refuses_other_settings(tmp_path):
    train(tiny_slm("llama").model, packed_batches(), causal_lm_loss, _cfg(max_steps=2), tmp_path,
          progress=False)
    with pytest.raises(SlmError, match="other training settings"):
        train(tiny_slm("llama").model, packed_batches(), causal_lm_loss, _cfg(max_steps=2, lr=1e-3),
              tmp_path, progress=False)


def test_grad_accum_equals_bigger_batch(tmp_path):
    """2 micro-batches of 1 accumulate to the gradient of one batch of 2."""
    cfg1 = _cfg(max_steps=3, grad_accum=2, batch_size=1, shuffle=False, bf16=False)
    cfg2 = _cfg(max_steps=3, grad_accum=1, batch_size=2, shuffle=False, bf16=False)
    a = train(tiny_slm("llama").model, packed_batches(batch_size=1), causal_lm_loss, cfg1,
              tmp_path / "a", progress=False)
    b = train(tiny_slm("llama").model, packed_batches(batch_size=2), causal_lm_loss, cfg2,
              tmp_path / "b", progress=False)
    for ra, rb in zip(a.loss_curve, b.loss_curve):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)


def test_grad_checkpointing_keeps_the_curve(tmp_path):
    cfg = dict(max_steps=3, bf16=False, shuffle=False)
    a = train(tiny_slm("llama").model, packed_batches(), causal_lm_loss, _cfg(**cfg),
              tmp_path / "a", progress=False)
    model = tiny_slm("llama").model
    b = train(model, packed_batches(), causal_lm_loss, _cfg(grad_checkpointing=True, **cfg),
              tmp_path / "b", progress=False)
    assert model.model.gradient_checkpointing
    assert [r["loss"] for r in b.loss_curve] == pytest.approx([r["loss"] for r in a.loss_curve],
                                                              rel=1e-5)


def test_compiled_layers_keep_the_curve_and_are_undone(tmp_path):
    """torch.compile of the decoder layers: same losses as eager, eval runs eager, and
    the model is plain again afterwards (saving, merging and inference see no wrapper)."""
    from slmkit.models.arch import all_decoder_layers
    from slmkit.tune.speedups import should_compile
    cfg = dict(max_steps=3, bf16=False, shuffle=False)
    a = train(tiny_slm("llama").model, packed_batches(), causal_lm_loss, _cfg(**cfg),
              tmp_path / "a", progress=False)
    model = tiny_slm("llama").model
    seen = []

    def eval_fn():
        seen.append(torch.compiler.is_compiling())
        return {"x": 1.0}

    from torch._dynamo.utils import counters
    counters.clear()
    b = train(model, packed_batches(), causal_lm_loss, _cfg(compile=True, eval_every=1, **cfg),
              tmp_path / "b", eval_fn=eval_fn, progress=False)
    assert counters["stats"]["unique_graphs"] >= 1            # the layers did run compiled
    assert [r["loss"] for r in b.loss_curve] == pytest.approx([r["loss"] for r in a.loss_curve],
                                                              rel=1e-4)
    layers = all_decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    assert all(layer._compiled_call_impl is None for layer in layers)
    assert seen and not any(seen)
    # auto: tiny models and short runs stay eager
    assert not should_compile(model, _cfg(max_steps=1000))


def test_schedule_shapes():
    kw = dict(warmup_steps=4, max_steps=104, min_lr_ratio=0.1)
    assert lr_factor(0, schedule="cosine", **kw) == pytest.approx(0.2)
    assert lr_factor(3, schedule="cosine", **kw) == pytest.approx(0.8)
    assert lr_factor(4, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(54, schedule="cosine", **kw) == pytest.approx(0.55)
    assert lr_factor(54, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_factor(29, schedule="linear", **kw) == pytest.approx(0.775)
    assert lr_factor(104, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(80, schedule="constant", **kw) == 1.0


def test_shuffle_is_a_permutation_per_epoch():
    seen = [batch_index(i, 7, seed=3, shuffle=True) for i in range(14)]
    assert sorted(seen[:7]) == list(range(7)) and sorted(seen[7:]) == list(range(7))
    assert seen[:7] != list(range(7))


def test_bad_config_names_field():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exponential")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=1e-3)


def test_chunked_ce_matches_hf_loss_and_grads():
    model = tiny_slm("llama").model.train()
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = model(input_ids=ids, labels=ids).loss
    ref.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss, metrics = causal_lm_loss(model, {"input_ids": ids}, chunk_tokens=5)
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert metrics["loss_tokens"] == 2 * 23
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- two ranks (gloo)

def _rank_main(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    import torch.distributed as dist
    model = tiny_slm("llama", seed=rank).model   # different init: rank 0's is broadcast
    rep = train(model, packed_batches(), causal_lm_loss,
                _cfg(max_steps=4, grad_accum=1, bf16=False),
                f"{out_dir}/ddp", progress=False)
    from safetensors.torch import save_file
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()},
              f"{out_dir}/rank{rank}.safetensors")
    if rank == 0:
        with open(f"{out_dir}/curve.json", "w") as f:
            json.dump([r["loss"] for r in rep.loss_curve], f)
    dist.destroy_process_group()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_ce_kl_matches_autograd(temperature):
    """Value and gradient of the fused loss equal autograd through log-softmax, with
    ignored rows (no CE, KL still counted) and a temperature."""
    import torch.nn.functional as F
    from slmkit.compress.distill import kd_divergence
    from slmkit.tune.losses import fused_ce_kl
    g = torch.Generator().manual_seed(0)
    s = torch.randn(37, 101, generator=g) * 3
    t = torch.randn(37, 101, generator=g) * 3
    y = torch.randint(0, 101, (37,), generator=g)
    y[[3, 10]] = -100
    a, b, T = 0.3, 0.7, temperature
    s1 = s.clone().requires_grad_()
    ce_ref = F.cross_entropy(s1, y, ignore_index=-100, reduction="sum")
    kl_ref = kd_divergence(s1, t, "forward_kl", T).sum()
    (a * ce_ref + b * T * T * kl_ref).backward()
    s2 = s.clone().requires_grad_()
    loss, ce, kl = fused_ce_kl(s2, y, w_ce=a, teacher_logits=t, w_kl=b, temperature=T)
    loss.backward()
    assert float(ce) == pytest.approx(float(ce_ref), rel=1e-5)
    assert float(kl) == pytest.approx(float(kl_ref), rel=1e-4)
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-4, atol=1e-6)
    s3 = s.clone().requires_grad_()
    fused_ce_kl(s3, y, w_ce=a)[0].backward()                    # CE alone
    s1.grad = None
    (a * F.cross_entropy(s1, y, ignore_index=-100, reduction="sum")).backward()
    torch.testing.assert_close(s3.grad, s1.grad, rtol=1e-5, atol=1e-7)


def test_two_ranks_match_single_process(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file
    tiny_slm("llama")       # import the model code once; forked children then start at once
    # fork: the children reuse the imported modules (spawn re-imports torch + transformers)
    mp.start_processes(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    for n in w0:
        assert torch.equal(w0[n], w1[n]), n
    single = train(tiny_slm("llama", seed=0).model, packed_batches(), causal_lm_loss,
                   _cfg(max_steps=4, grad_accum=2, bf16=False), tmp_path / "single",
                   progress=False)
    ddp = json.loads((tmp_path / "curve.json").read_text())
    assert ddp == pytest.approx([r["loss"] for r in single.loss_curve], rel=1e-4)
    assert [p.name for p in checkpoint_dirs(tmp_path / "ddp")] == ["step-0000002", "step-0000004"]
