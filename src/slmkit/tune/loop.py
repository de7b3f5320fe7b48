"""The one training loop of slmkit: fine-tuning and distillation differ only in the
model they hand it (what is trainable) and in the loss function.

    report = train(model, batches, loss_fn, TrainConfig(max_steps=200), work_dir)

- ``batches`` is a sized, indexable dataset of batches (dicts of tensors). The
  loop's data position is an integer, so a resumed run reads exactly the batches
  the unbroken run would have read.
- bf16 autocast on CPU (trainable parameters and optimizer state stay fp32; the frozen
  ones are held in bf16 while training, ``frozen_weights_in_bf16``), gradient
  accumulation, optional gradient checkpointing, ``torch.compile`` of the decoder
  layers one by one (identical layers share one compiled graph, so compiling
  costs tens of seconds, not minutes; evaluations run eager), AdamW with warm-up and a
  cosine/linear/constant schedule, gradient clipping.
- CPU kernels: causal attention in query blocks that skip the keys after them
  (``tune.attention``), the output head's cross-entropy as one compiled kernel
  (``losses.compiled_ce``), and malloc kept from handing big tensors fresh pages every
  step (``tune.heap``).
- Atomic checkpoints in ``work_dir/checkpoints/step-NNNNNNN/``: trainable
  parameters (safetensors), optimizer state and RNG states (``torch.save``,
  read back with ``weights_only=True``), and ``state.json`` with the step, data
  position and the curves so far. ``resume=True`` continues from the newest one.
- Under ``torchrun --nproc-per-node K`` (env ``WORLD_SIZE`` > 1) the process group
  is initialised from the environment (gloo on CPU, nccl on CUDA), rank r reads
  micro-batches r, r+K, r+2K, ..., gradients are averaged across ranks before
  each optimizer step (data parallel, as DDP does), and only rank 0 writes.
  K ranks with ``grad_accum=a`` see the same batches per step as 1 rank with
  ``grad_accum=a*K``.
- ``parallel="fsdp"`` shards instead of replicating (``slmkit.tune.fsdp``, PyTorch's
  FSDP2): each rank holds 1/K of every parameter, gradient and AdamW moment, the
  gradients are reduce-scattered, clipping uses the norm over all shards, and
  checkpoints hold the full weights and optimizer state in the same files as an
  unsharded run (either kind resumes the other's). Evaluations run on rank 0 with the
  full weights gathered for them; the trained full weights are in ``model`` on every
  rank at the end. Decoder layers run eager under FSDP, and adapters (LoRA) train
  with DDP only. In one process the option changes nothing.

The loop's concerns each have a module: ``config`` (TrainConfig, TrainReport),
``state`` (TrainState, the one object the helpers share), ``checkpoint``,
``distributed``, ``speedups`` (compile, bf16 weights, activation checkpointing) and
``fsdp``; batches come from :class:`slmkit.data.batches.Batches`.
"""
from __future__ import annotations

import random
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from torch import nn

from ..device import autocast_type, model_device, to_device
from ..errors import SlmError
from .attention import blocked_attention_for
from .checkpoint import checkpoint_run, resume_run
from .config import TrainConfig, TrainReport
from .distributed import (all_mean, average_grads, clip_grads, dist_setup, is_main, note,
                          state_bytes, sync_params, threads_for, train_device, use_fsdp)
from .fsdp import Sharded
from .heap import reuse_heap
from .schedule import lr_factor
from .speedups import (compiled_layers, enable_grad_checkpointing, frozen_weights_in_bf16,
                       should_compile)
from .state import TrainState

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]

__all__ = ["LossFn", "TrainConfig", "TrainReport", "batch_index", "batch_tokens",
           "make_optimizer", "train", "trainable"]


# ---------------------------------------------------------------- data order

def batch_index(position: int, n: int, seed: int, shuffle: bool) -> int:
    """Index of the batch read at global micro-batch ``position`` (epoch-wise permutation)."""
    epoch, pos = divmod(position, n)
    if not shuffle:
        return pos
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return int(torch.randperm(n, generator=g)[pos])


def batch_tokens(batch: dict) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


# ---------------------------------------------------------------- model setup

def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters by name (tied parameters once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def make_optimizer(params: dict[str, nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm gains and biases are not decayed)."""
    decay = [p for p in params.values() if p.ndim >= 2]
    rest = [p for p in params.values() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                             betas=tuple(cfg.adam_betas), foreach=True)


def _setup(model: nn.Module, loss_fn: LossFn, cfg: TrainConfig, work_dir: Path, rank: int,
           world: int, fsdp: bool) -> TrainState:
    """The run's state: trainable parameters (this rank's shards under FSDP), optimizer
    and ``forward(batch) -> (loss, metrics)``."""
    params = trainable(model)
    if not params:
        raise SlmError("the model has no trainable parameters", "unfreeze some parameters")
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    sync_params(list(params.values()), world)
    model.train()
    sharded, forward = None, partial(loss_fn, model)
    if fsdp:
        sharded = Sharded(model, world)
        params, forward = sharded.trainable(), partial(sharded, loss_fn)
    return TrainState(model, cfg, Path(work_dir), params, make_optimizer(params, cfg), forward,
                      rank=rank, world=world, sharded=sharded)


# ---------------------------------------------------------------- one step

def _micro_step(st: TrainState, batches, m: int, autocast) -> tuple[float, dict, int]:
    """Forward + backward of one micro-batch; returns (loss, metrics, tokens)."""
    cfg, run = st.cfg, st.run
    g = run.position + m * st.world + st.rank
    batch = batches[batch_index(g, len(batches), cfg.seed, cfg.shuffle)]
    batch = to_device(batch, st.device)
    with autocast:
        loss, metrics = st.forward(batch)
    if not torch.isfinite(loss):
        raise SlmError(f"training loss became {loss.item()} at step {run.step + 1}",
                       "lower the learning rate or check the data")
    (loss / cfg.grad_accum).backward()
    return float(loss.detach()), metrics, batch_tokens(batch)


def _optimizer_step(st: TrainState, batches) -> dict:
    """One optimizer step over ``grad_accum`` micro-batches per rank; returns its log row."""
    cfg, run, world = st.cfg, st.run, st.world
    lr = cfg.lr * lr_factor(run.step, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                            schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio)
    for group in st.opt.param_groups:
        group["lr"] = lr
    autocast = torch.autocast(autocast_type(st.device), dtype=torch.bfloat16, enabled=cfg.bf16)
    losses, sums, tokens = [], {}, 0
    for m in range(cfg.grad_accum):
        loss, metrics, ntok = _micro_step(st, batches, m, autocast)
        losses.append(loss)
        tokens += ntok
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    plist = list(st.params.values())
    if st.sharded is None:                   # FSDP reduce-scattered them in the backward
        average_grads(plist, world)
    gnorm = clip_grads(plist, cfg.max_grad_norm or float("inf"))
    st.opt.step()
    st.opt.zero_grad(set_to_none=True)
    keys = sorted(sums)
    vals = all_mean([sum(losses) / len(losses), tokens * world, float(gnorm)]
                    + [sums[k] / cfg.grad_accum for k in keys], world)
    run.step += 1
    run.position += cfg.grad_accum * world
    run.tokens += int(round(vals[1]))
    row = {"step": run.step, "tokens": run.tokens, "loss": vals[0], "lr": lr,
           "grad_norm": vals[2]}
    row.update({k: v for k, v in zip(keys, vals[3:])})
    return row


def _evaluate(st: TrainState) -> None:
    """``st.eval_fn`` on rank 0 (under bf16 autocast with ``bf16``: the frozen weights may
    be bf16 then); under FSDP every rank first helps gather the full weights."""
    if st.eval_fn is None or (st.sharded is None and not is_main()):
        return
    model = st.model
    with st.sharded.gathered() if st.sharded is not None else nullcontext():
        if not is_main():
            return
        was = model.training
        model.eval()
        with (torch.no_grad(), torch.compiler.set_stance("force_eager"),
              torch.autocast(autocast_type(model_device(model)), dtype=torch.bfloat16,
                             enabled=st.cfg.bf16)):
            out = st.eval_fn()
        model.train(was)
    st.run.eval_curve.append({"step": st.run.step, "tokens": st.run.tokens,
                              **{k: float(v) for k, v in out.items()}})


def _stop_requested(st: TrainState) -> bool:
    """True when the eval just run returned a truthy ``stop`` (early stopping); every
    rank follows rank 0's answer."""
    run = st.run
    last = run.eval_curve[-1] if run.eval_curve else {}
    flag = torch.tensor([float(last.get("step") == run.step and last.get("stop", 0) > 0)])
    if st.world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


# ---------------------------------------------------------------- progress bar

def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return nullcontext(None)
    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                   console=Console(stderr=True))
    bar.add_task("train", total=total, completed=done, loss="-", tps="-")
    return bar


def _show(bar, run, row: dict, tps: float, total: int) -> None:
    """Update the bar; without a terminal (logs, CI) print a plain line ~20 times a run."""
    bar.update(0, completed=run.step, loss=f"{row['loss']:.4f}", tps=f"{tps:,.0f}")
    if not bar.console.is_terminal and (run.step % max(1, total // 20) == 0
                                        or run.step == total):
        bar.console.print(f"step {run.step}/{total} loss {row['loss']:.4f} "
                          f"tokens {run.tokens} {tps:,.0f} tok/s", highlight=False)


# ---------------------------------------------------------------- the loop

def train(model: nn.Module, batches, loss_fn: LossFn, cfg: TrainConfig, work_dir: str | Path,
          *, eval_fn: Callable[[], dict] | None = None, resume: bool = True,
          progress: bool = True) -> TrainReport:
    """Optimise the trainable parameters of ``model`` on ``batches`` with ``loss_fn``.

    Args:
        model: module whose ``requires_grad`` parameters are trained (an HF model,
            a PEFT model, or a wrapper holding a student and projections).
        batches: sized, indexable dataset; ``batches[i]`` is a dict of tensors with
            at least ``input_ids`` (used to count tokens).
        loss_fn: ``loss_fn(model, batch) -> (scalar loss, {metric: float})``, run under
            bf16 autocast when ``cfg.bf16``.
        cfg: optimizer, schedule and checkpoint settings.
        work_dir: checkpoints go to ``work_dir/checkpoints``.
        eval_fn: ``eval_fn() -> {name: float}`` run (rank 0, no_grad, eval mode) every
            ``cfg.eval_every`` steps and at the end; a truthy ``stop`` in its result
            ends training after that eval (early stopping). If it has ``state_dict()`` and
            ``load_state_dict()``, what it keeps between calls goes into the checkpoints
            and comes back on resume.
        resume: continue from the newest checkpoint in ``work_dir`` if there is one.
        progress: show a progress bar (rank 0 only).

    Returns:
        TrainReport with the loss curve (one row per optimizer step), eval curve,
        tokens and speed. The trained weights are left in ``model``.
    """
    if len(batches) == 0:
        raise SlmError("no training batches", "add data or lower the batch size")
    rank, world = dist_setup()
    device = train_device(cfg, world)
    model.to(device)
    fsdp = use_fsdp(cfg, world)
    compile_ = should_compile(model, cfg)
    if fsdp and compile_:
        note("torch.compile is off under fsdp: the decoder layers run eager")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_for(cfg, world))
    try:
        with (compiled_layers(model, compile_ and not fsdp), reuse_heap(),
              blocked_attention_for(model, cfg.blocked_attention and device.type == "cpu"),
              frozen_weights_in_bf16(model, cfg.bf16 and not fsdp, cfg.bf16_base)):
            torch.manual_seed(cfg.seed + rank)
            random.seed(cfg.seed + rank)
            st = _setup(model, loss_fn, cfg, work_dir, rank, world, fsdp)
            st.eval_fn = eval_fn
            return _train(st, batches, resume, progress)
    finally:
        torch.set_num_threads(threads)


def _train(st: TrainState, batches, resume: bool, progress: bool) -> TrainReport:
    cfg, run = st.cfg, st.run
    resumed = resume_run(st) if resume else None
    if resumed is None and cfg.eval_at_start:
        _evaluate(st)
    seg_tokens, seg_time = 0, 0.0
    stopped = resumed is not None and _stop_requested(st)        # it had stopped early
    with _progress(progress and is_main(), cfg.max_steps, run.step) as bar:
        while run.step < cfg.max_steps and not stopped:
            t0, tok0 = time.perf_counter(), run.tokens
            row = _optimizer_step(st, batches)
            dt = time.perf_counter() - t0
            run.time_s += dt
            seg_time += dt
            seg_tokens += run.tokens - tok0
            row["step_s"] = dt                 # wall time of this step (steady-state speed)
            run.loss_curve.append(row)
            if bar is not None and (run.step % cfg.log_every == 0 or run.step == cfg.max_steps):
                _show(bar, run, row, seg_tokens / max(seg_time, 1e-9), cfg.max_steps)
            if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.max_steps:
                _evaluate(st)
                if _stop_requested(st):
                    break
            if cfg.ckpt_every and run.step % cfg.ckpt_every == 0 and run.step < cfg.max_steps:
                checkpoint_run(st)
    if not run.eval_curve or run.eval_curve[-1]["step"] != run.step:
        _evaluate(st)
    checkpoint_run(st)
    return _finish(st, resumed, seg_tokens, seg_time)


def _finish(st: TrainState, resumed: int | None, seg_tokens: int, seg_time: float
            ) -> TrainReport:
    """The report; under FSDP the full trained weights go back into ``st.model``."""
    run, sharded = st.run, st.sharded
    held = state_bytes(st.params, st.opt)
    if sharded is not None:
        st.opt = None                        # free the moments before the full weights return
        sharded.restore()
    st.model.eval()
    return TrainReport(steps=run.step, tokens=run.tokens, time_s=run.time_s,
                       tokens_per_s=seg_tokens / seg_time if seg_time else 0.0,
                       loss_curve=run.loss_curve, eval_curve=run.eval_curve,
                       resumed_from=resumed, world_size=st.world, state_bytes=held,
                       parallel="fsdp" if sharded else ("ddp" if st.world > 1 else "none"))
