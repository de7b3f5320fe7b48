"""FSDP: two gloo ranks holding shards train like one process and like DDP, checkpoints
resume, and the saved models are full."""
import json
import os
import shutil

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_slm
from slmkit.tune.losses import causal_lm_loss
from slmkit.tune.checkpoint import checkpoint_dirs
from slmkit.tune.loop import TrainConfig, train
from train_helpers import crash_at, free_port, one_thread, packed_batches  # noqa: F401


def _cfg(**kw):
    base = dict(lr=3e-3, warmup_steps=2, max_steps=4, ckpt_every=2, batch_size=2, seed=0,
                bf16=False)
    base.update(kw)
    return TrainConfig(**base)


def _spawn(fn, *args):
    import torch.multiprocessing as mp
    tiny_slm("llama")       # import the model code once; forked children then start at once
    mp.start_processes(fn, args=(2, free_port(), *args), nprocs=2, join=True,
                       start_method="fork")


def _join(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)        # the parent's OpenMP thread pool does not survive fork


_HELD_OUT = {"input_ids": torch.randint(3, 512, (2, 32),
                                        generator=torch.Generator().manual_seed(9))}


def _held_out_loss(model):
    return lambda: {"held_out": float(causal_lm_loss(model, _HELD_OUT)[0])}


def _parity_rank(rank, world, port, out):
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    _join(rank, world, port)
    result = {}
    for mode in ("fsdp", "ddp"):
        model = tiny_slm("llama", seed=rank).model    # different init: rank 0's is broadcast
        rep = train(model, packed_batches(), causal_lm_loss, _cfg(parallel=mode, eval_every=2),
                    f"{out}/{mode}", eval_fn=_held_out_loss(model), progress=False)
        plain = (type(model).__name__ == "LlamaForCausalLM"
                 and model.lm_head.weight is model.model.embed_tokens.weight
                 and not any(isinstance(p, DTensor) for p in model.parameters()))
        result[mode] = {"curve": [r["loss"] for r in rep.loss_curve], "plain": plain,
                        "evals": [e["held_out"] for e in rep.eval_curve],
                        "parallel": rep.parallel, "state_bytes": rep.state_bytes}
        torch.save({n: p.detach().clone() for n, p in model.named_parameters()},
                   f"{out}/{mode}-rank{rank}.pt")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def test_fsdp_two_ranks_match_single_process_and_ddp(tmp_path):
    from safetensors.torch import load_file
    _spawn(_parity_rank, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    w = {(m, r): torch.load(tmp_path / f"{m}-rank{r}.pt") for m in ("fsdp", "ddp") for r in (0, 1)}
    for n in w["fsdp", 0]:                  # the gathered weights agree on both ranks ...
        assert torch.equal(w["fsdp", 0][n], w["fsdp", 1][n]), n
        torch.testing.assert_close(w["fsdp", 0][n], w["ddp", 0][n], rtol=1e-4, atol=1e-6)
    single_model = tiny_slm("llama", seed=0).model
    single = train(single_model, packed_batches(), causal_lm_loss,
                   _cfg(grad_accum=2, eval_every=2), tmp_path / "single",
                   eval_fn=_held_out_loss(single_model), progress=False)
    fsdp, ddp = r0["fsdp"], r0["ddp"]
    assert fsdp["curve"] == pytest.approx([r["loss"] for r in single.loss_curve], rel=1e-5)
    assert fsdp["curve"] == pytest.approx(ddp["curve"], rel=1e-5)
    assert fsdp["curve"][-1] < fsdp["curve"][0] - 0.3
    assert fsdp["evals"] == pytest.approx([e["held_out"] for e in single.eval_curve], rel=1e-5)
    assert len(fsdp["evals"]) == 3 and r1["fsdp"]["evals"] == []     # rank 0 evaluates
    for n, p in single_model.named_parameters():
        torch.testing.assert_close(w["fsdp", 0][n], p.detach(), rtol=1e-4, atol=1e-6)
    # each rank held half of the parameters, gradients and AdamW moments
    assert (fsdp["parallel"], ddp["parallel"]) == ("fsdp", "ddp")
    n_params = sum(p.numel() for p in single_model.parameters())
    assert ddp["state_bytes"] == pytest.approx(4 * 4 * n_params, rel=1e-3)   # p, grad, m, v
    assert fsdp["state_bytes"] == r1["fsdp"]["state_bytes"]
    assert fsdp["state_bytes"] == pytest.approx(ddp["state_bytes"] / 2, rel=1e-3)
    assert fsdp["plain"] and r1["fsdp"]["plain"]
    # checkpoints hold the full weights, under the same names as an unsharded run's
    names = [p.name for p in checkpoint_dirs(tmp_path / "fsdp")]
    assert names == [p.name for p in checkpoint_dirs(tmp_path / "ddp")] == ["step-0000002",
                                                                             "step-0000004"]
    last = tmp_path / "fsdp" / "checkpoints" / "step-0000004"
    saved = load_file(str(last / "params.safetensors"))
    assert set(saved) == set(w["fsdp", 0])
    for n, t in saved.items():
        assert torch.equal(t, w["fsdp", 0][n]), n


def _resume_rank(rank, world, port, out):
    import torch.distributed as dist
    _join(rank, world, port)
    cfg = _cfg(parallel="fsdp", max_steps=6, ckpt_every=3)
    full = train(tiny_slm("llama", seed=rank).model, packed_batches(), causal_lm_loss, cfg,
                 f"{out}/full", progress=False)
    crashing = crash_at(5, causal_lm_loss)      # dies inside step 5, after checkpoint 3

    with pytest.raises(KeyboardInterrupt):
        train(tiny_slm("llama", seed=rank).model, packed_batches(), crashing, cfg, f"{out}/cut",
              progress=False)
    dist.barrier()
    if rank == 0:
        shutil.copytree(f"{out}/cut", f"{out}/cut-ddp")
    dist.barrier()
    curves = {"full": [r["loss"] for r in full.loss_curve]}
    for name, parallel in (("cut", "fsdp"), ("cut-ddp", "ddp")):
        model = tiny_slm("llama", seed=1 + rank).model     # other weights: state is restored
        rep = train(model, packed_batches(), causal_lm_loss, cfg.model_copy(update={
            "parallel": parallel}), f"{out}/{name}", progress=False)
        curves[name] = [r["loss"] for r in rep.loss_curve]
        curves[name + "-from"] = rep.resumed_from
    if rank == 0:
        with open(f"{out}/curves.json", "w") as f:
            json.dump(curves, f)
    dist.destroy_process_group()


def test_fsdp_resume_reproduces_unbroken_curve(tmp_path):
    """An FSDP run cut after its step-3 checkpoint resumes (with other initial weights) to
    the unbroken curve; a DDP run resumes the same checkpoint to it too."""
    _spawn(_resume_rank, str(tmp_path))
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert curves["cut-from"] == curves["cut-ddp-from"] == 3
    assert len(curves["full"]) == 6
    assert curves["cut"] == curves["full"]
    assert curves["cut-ddp"] == pytest.approx(curves["full"], rel=1e-5)


def _run_rank(rank, world, port, out, files):
    import torch.distributed as dist
    from slmkit.compress.distill import DistillConfig, run_distill
    from slmkit.models.io import load
    from slmkit.tune.finetune import FinetuneConfig, run_finetune
    _join(rank, world, port)
    reports = {}
    for mode in ("fsdp", "ddp"):
        student = load(f"{files}/student")
        cfg = DistillConfig(teacher=f"{files}/teacher", data=f"{files}/data.txt", tokens=1024,
                            seq_len=32, batch_size=2, lr=3e-3, warmup_steps=1, ckpt_every=2,
                            val_tokens=256, bf16=False, fsdp=mode == "fsdp")
        reports[mode] = run_distill(student, f"{out}/distill-{mode}", cfg, progress=False)
        torch.save({n: p.detach().clone() for n, p in student.model.named_parameters()},
                   f"{out}/distill-{mode}-rank{rank}.pt")
    ft = FinetuneConfig(data=f"{files}/data.txt", method="full", lr=1e-3, seq_len=32,
                        batch_size=2, max_tokens=512, eval_every=2, fsdp=True)
    reports["finetune"] = run_finetune(tiny_slm("llama"), f"{out}/ft", ft, progress=False)
    if rank == 0:
        with open(f"{out}/reports.json", "w") as f:
            json.dump(reports, f)
    dist.destroy_process_group()


def test_fsdp_distill_and_finetune_save_full_models(tmp_path):
    from transformers import AutoModelForCausalLM

    from slmkit.models.io import save
    files = tmp_path / "files"
    save(tiny_slm("llama", seed=0), files / "teacher")
    save(tiny_slm("llama", seed=1), files / "student")
    (files / "data.txt").write_text("\n\n".join(
        f"Section {i}. The function returns a list of {i % 7} values and raises ValueError "
        f"when the argument {i % 5} is empty." for i in range(80)))
    _spawn(_run_rank, str(tmp_path), str(files))
    reps = json.loads((tmp_path / "reports.json").read_text())
    fsdp, ddp = reps["fsdp"], reps["ddp"]
    assert (fsdp["parallel"], fsdp["world_size"], ddp["parallel"]) == ("fsdp", 2, "ddp")
    assert fsdp["teacher_unchanged"] is True and fsdp["tokens"] == ddp["tokens"] >= 1024
    assert fsdp["val_ppl"] < fsdp["val_ppl_before"]
    assert fsdp["val_ppl"] == pytest.approx(ddp["val_ppl"], rel=1e-4)
    assert [r["loss"] for r in fsdp["loss_curve"]] == pytest.approx(
        [r["loss"] for r in ddp["loss_curve"]], rel=1e-5)
    assert fsdp["state_bytes_per_rank"] < 0.51 * ddp["state_bytes_per_rank"]
    trained = torch.load(tmp_path / "distill-fsdp-rank1.pt")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "distill-fsdp")
    assert saved.lm_head.weight is saved.model.embed_tokens.weight
    for n, p in saved.named_parameters():
        assert torch.equal(p, trained[n]), n
    ft = reps["finetune"]
    assert (ft["parallel"], ft["steps"], ft["tokens"]) == ("fsdp", 4, 512)
    assert ft["val_loss_after"] < ft["val_loss_before"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ft")
    assert sum(p.numel() for p in merged.parameters()) == ft["params"]
    assert not (tmp_path / "ft.partial").exists()


def test_fsdp_in_one_process_changes_nothing(tmp_path, capsys):
    a = train(tiny_slm("llama").model, packed_batches(), causal_lm_loss, _cfg(), tmp_path / "a",
              progress=False)
    b = train(tiny_slm("llama").model, packed_batches(), causal_lm_loss, _cfg(parallel="fsdp"),
              tmp_path / "b", progress=False)
    assert [r["loss"] for r in b.loss_curve] == [r["loss"] for r in a.loss_curve]
    assert b.parallel == "none" and b.state_bytes == a.state_bytes
    assert "fsdp has no effect in one process" in capsys.readouterr().err


def test_fsdp_refuses_adapters():
    from slmkit.tune import adapters
    from slmkit.tune.finetune import FinetuneConfig
    from slmkit.tune.fsdp import check_shardable
    net = adapters.setup_model(tiny_slm("llama").model, "lora", rank=4)
    with pytest.raises(SlmError, match="not LoRA"):
        check_shardable(net)
    with pytest.raises(ValueError, match="full fine-tuning only, not method qlora"):
        FinetuneConfig(data="python-docs", method="qlora", fsdp=True)
    check_shardable(tiny_slm("llama").model)


@pytest.mark.parametrize("command", ["distill", "finetune"])
def test_cli_explains_fsdp(command, capsys):
    from slmkit.cli import main
    try:
        main([command, "--help"])                  # --help returns 0 rather than exiting
    except SystemExit as exc:
        assert exc.code in (0, None)
    text = capsys.readouterr().out
    assert "--fsdp" in text and "~1/K" in text
