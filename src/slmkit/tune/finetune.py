"""Fine-tune a model on domain data: LoRA, DoRA, QLoRA or full, on the one training loop.

    report = run_finetune("smollm2-135m", "runs/x/01-finetune",
                          FinetuneConfig(data="python-docs", method="lora", max_tokens=200_000))

Records are encoded with loss masks (``data.sft``), packed into blocks with
per-example position ids, and trained by ``slmkit.tune.loop.train`` with a loss
that applies the output head in chunks (``losses.chunked_head_loss``), so the
(B, T, vocab) logits never exist at once. The validation split is evaluated
before training, every ``eval_every`` steps and at the end; with ``patience``
training stops after that many evaluations without a new best validation loss
and the best weights are kept. Under ``torchrun --nproc-per-node K`` the loop trains
data parallel (the token budget counts all ranks) and rank 0 writes the outputs; with
``fsdp`` (full fine-tuning only) the weights, gradients and optimizer state are
sharded over the ranks.

Output directory (complete or absent; work in progress lives in ``<out>.partial``
with ``checkpoints/`` for resuming):

    <out>/adapter/        PEFT adapter (adapter_model.safetensors) + base fingerprint
    <out>/*.safetensors   merged standalone model (with ``merge``, and always for ``full``)
    <out>/report.json     loss curve, val loss/ppl before and after, tokens/s, peak memory
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from ..data import load_split, read_records, split
from ..data.batches import Batches
from ..data.sft import IGNORE, Packed, encode_records, pack_examples
from ..evaluate.memory import peak_rss
from ..evaluate.perplexity import model_engine, perplexity, record_ids, step_window
from ..models.io import SLM, dir_bytes, load
from ..outputs import refuse_existing
from ..step import write_outputs
from . import adapters
from .config import TrainConfig, TrainSettings
from .distributed import barrier, dist_setup, is_main
from .loop import train
from .losses import backbone_and_head, chunked_head_loss, fused_ce_kl, shift_labels

DEFAULT_LR = {"lora": 2e-4, "dora": 2e-4, "qlora": 2e-4, "full": 3e-5}


class FinetuneConfig(TrainSettings):
    """Options of ``slm finetune`` and of a ``finetune`` recipe step: the training loop's
    settings (:class:`slmkit.tune.config.TrainSettings`: batch_size, schedule, bf16_base,
    ...), three of them with defaults of their own, and what fine-tuning adds."""

    data: str = Field(..., description="file, directory or built-in corpus")
    method: Literal["lora", "dora", "qlora", "full"] = "lora"
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scaling = alpha / rank)")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (off by default: on a "
                           "CPU its random masks cost ~20% of a training step)")
    targets: list[str] | None = Field(None, description="decoder linear layers; None = all")
    quant_format: Literal["nf4", "int4"] = Field("nf4", description="QLoRA 4-bit format")
    quant_group: int = Field(64, ge=2, description="QLoRA input columns per scale")
    lr: float | None = Field(None, gt=0, description="peak learning rate (default by method)")
    epochs: float = Field(1.0, gt=0, description="passes over the training data")
    max_tokens: int | None = Field(None, ge=1, description="token budget (overrides epochs)")
    seq_len: int = Field(512, ge=8, description="tokens per packed block")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share of the records")
    val_data: str | None = Field(None, description="validate on the val split of this data "
                                 "instead (then all of `data` trains)")
    max_val_blocks: int = Field(32, ge=1, description="validation tokens scored, in blocks "
                                "of seq_len")
    eval_every: int = Field(0, ge=0, description="steps between val evals; 0 = about 8 per run")
    ckpt_every: int | None = Field(None, ge=0, description="steps between checkpoints; "
                                   "None = every max(eval_every, 25) steps")
    patience: int = Field(3, ge=0, description="evals without improvement before stopping; 0=off")
    merge: bool = Field(False, description="also write the merged standalone model")
    chunk_tokens: int = Field(1024, ge=16, description="tokens per output-head chunk in the loss")
    fsdp: bool = Field(False, description="under torchrun, shard the weights, gradients and "
                       "optimizer state over the K ranks (each holds ~1/K); method full only")
    resume: bool = True

    @field_validator("targets")
    @classmethod
    def _targets(cls, v):
        if v is not None and (not v or any(not t.strip() for t in v)):
            raise ValueError("targets must be non-empty module names (or omit for all)")
        return v

    @field_validator("fsdp")
    @classmethod
    def _fsdp_full_only(cls, v, info):
        method = info.data.get("method")
        if v and method != "full":
            raise ValueError(f"FSDP shards full fine-tuning only, not method {method}; drop "
                             "--fsdp (adapters train data parallel) or use --method full")
        return v

    def peak_lr(self) -> float:
        return self.lr or DEFAULT_LR[self.method]


# ---------------------------------------------------------------- loss

def sft_loss(model: torch.nn.Module, batch: dict, chunk_tokens: int = 1024
             ) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy over label tokens of a packed batch.

    ``batch`` holds ``input_ids``, ``labels`` (-100 = no loss) and ``position_ids``
    (restarting per packed example, which makes attention block-diagonal). The
    head runs in chunks of ``chunk_tokens`` rows on the loss tokens only.
    """
    backbone, head, softcap = backbone_and_head(model)
    h = backbone(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                 use_cache=False).last_hidden_state                    # (B, T, H)
    targets = shift_labels(batch).reshape(-1)                          # (B*T,)
    keep = targets != IGNORE
    n = int(keep.sum())
    if n == 0:
        return h.sum() * 0.0, {"loss_tokens": 0}
    h = h.reshape(-1, h.shape[-1])[keep]                               # (N, H)
    targets = targets[keep]

    def ce(logits: torch.Tensor, rows: slice) -> torch.Tensor:
        return fused_ce_kl(logits, targets[rows], w_ce=1.0 / n)[0]

    return (chunked_head_loss(h, head, ce, chunk_tokens, softcap, upcast=False),
            {"loss_tokens": n})


# ---------------------------------------------------------------- data

def prepare_data(cfg: FinetuneConfig, tokenizer) -> tuple[Packed, list[dict], dict]:
    """Train blocks and validation records of ``cfg.data``, and a summary of them."""
    if cfg.val_data:
        train_recs, val_recs = read_records(cfg.data), load_split(cfg.val_data, "val")
    else:
        train_recs, val_recs = split(read_records(cfg.data), cfg.val_fraction)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train = pack_examples(encode_records(train_recs, tokenizer), cfg.seq_len, pad)
    info = {"train_records": len(train_recs), "val_records": len(val_recs),
            "train_blocks": len(train), "train_loss_tokens": train.n_loss_tokens}
    return train, val_recs, info


def plan_steps(cfg: FinetuneConfig, n_batches: int, world: int = 1) -> int:
    """Optimizer steps for the token budget, or for ``epochs`` passes, over ``world`` ranks."""
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world
    if cfg.max_tokens:
        return max(1, math.ceil(cfg.max_tokens / per_step))
    return max(1, math.ceil(cfg.epochs * n_batches / (cfg.grad_accum * world)))


# ---------------------------------------------------------------- early stopping

class EarlyStopper:
    """Validation eval for the loop: tracks the best val loss, keeps a copy of the best
    trainable weights, and reports ``stop`` after ``patience`` evals with no improvement.

    The val loss and perplexity are evaluate's (``slm eval``'s convention) on the first
    ``max_val_blocks * seq_len`` tokens of the validation records."""

    def __init__(self, model, tokenizer, ids: list[int], cfg: FinetuneConfig):
        self.model, self.tokenizer, self.ids, self.cfg = model, tokenizer, ids, cfg
        self.best, self.bad, self.best_state = float("inf"), 0, None

    @classmethod
    def for_records(cls, model, tokenizer, records: list[dict], cfg: FinetuneConfig):
        """A stopper over ``records``; None when they hold fewer than 2 tokens."""
        was = model.training
        ids = record_ids(model_engine(model, tokenizer), records,
                         cfg.max_val_blocks * cfg.seq_len)
        model.train(was)
        return cls(model, tokenizer, ids, cfg) if len(ids) > 1 else None

    def __call__(self) -> dict:
        r = perplexity(model_engine(self.model, self.tokenizer), self.ids,
                       *step_window(self.cfg.seq_len), progress=False)
        loss = r["nll"]
        if loss < self.best - 1e-4:
            self.best, self.bad = loss, 0
            self.best_state = {n: p.detach().clone() for n, p in self.model.named_parameters()
                               if p.requires_grad}
        else:
            self.bad += 1
        stop = bool(self.cfg.patience) and self.bad >= self.cfg.patience
        return {"val_loss": loss, "val_ppl": r["ppl"], "stop": float(stop)}

    def state_dict(self) -> dict:
        """What it keeps between evals (the loop's checkpoints carry it over a resume)."""
        return {"best": self.best, "bad": self.bad, "best_state": self.best_state or {}}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = float(state["best"]), int(state["bad"])
        self.best_state = dict(state["best_state"]) or None

    def restore_best(self) -> bool:
        """Put the best weights back; True if they differ from the current ones."""
        if self.best_state is None:
            return False
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in self.best_state.items():
                params[n].copy_(v)
        return True


# ---------------------------------------------------------------- run

def _train_cfg(cfg: FinetuneConfig, steps: int) -> TrainConfig:
    """The loop's config: ``cfg``'s training settings, with what this run derives from
    the method and the number of steps."""
    every = cfg.eval_every or max(1, steps // 8)
    return cfg.train_config(
        steps, lr=cfg.peak_lr(), warmup_steps=min(cfg.warmup_steps, steps // 4),
        eval_every=every, ckpt_every=max(every, 25) if cfg.ckpt_every is None else cfg.ckpt_every,
        parallel="fsdp" if cfg.fsdp else "ddp")


def _load(model) -> SLM:
    return model if isinstance(model, SLM) else load(model)


def run_finetune(model: str | Path | SLM, out: str | Path, cfg: FinetuneConfig, *,
                 progress: bool = True, overwrite: bool = False) -> dict:
    """Fine-tune ``model`` on ``cfg.data`` and write adapter / merged model / report to ``out``.

    Args:
        model: a spec for ``slmkit.load`` or a loaded SLM (it is modified in place).
        out: output directory (written atomically).
        cfg: fine-tuning options.
        progress: show the training progress bar.
        overwrite: replace an existing ``out``.

    Returns:
        the report dict (also written to ``out/report.json``).
    """
    out = Path(out)
    refuse_existing(out, overwrite)
    t0 = time.time()
    _, world = dist_setup()
    slm = _load(model)
    fingerprint = adapters.base_fingerprint(slm.model)
    n_params = slm.n_params
    train_data, val_recs, info = prepare_data(cfg, slm.tokenizer)
    batches = Batches(train_data.columns(), cfg.batch_size)
    steps = plan_steps(cfg, len(batches), world)
    torch.manual_seed(cfg.seed)              # the adapters' initial weights (LoRA A, DoRA)
    net = adapters.setup_model(slm.model, cfg.method, rank=cfg.rank, alpha=cfg.alpha,
                               dropout=cfg.dropout, targets=cfg.targets,
                               quant_format=cfg.quant_format, quant_group=cfg.quant_group)
    stopper = EarlyStopper.for_records(net, slm.tokenizer, val_recs, cfg)
    info["val_tokens"] = len(stopper.ids) if stopper is not None else 0
    work = out.with_name(out.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    rep = train(net, batches, lambda m, b: sft_loss(m, b, cfg.chunk_tokens), _train_cfg(cfg, steps),
                work, eval_fn=stopper, resume=cfg.resume, progress=progress)
    restored = stopper.restore_best() if stopper is not None else False
    report = _report(cfg, slm, net, rep, info, steps, restored, t0)
    report["params"] = n_params
    if is_main():                            # under torchrun rank 0 writes
        _write_outputs(slm, net, cfg, work, out, fingerprint, report, overwrite)
    barrier(world)
    return report


def _report(cfg, slm, net, rep, info, steps, restored, t0) -> dict:
    ev = rep.eval_curve
    best = min(ev, key=lambda r: r["val_loss"]) if ev else None
    after = best if restored else (ev[-1] if ev else None)
    return {
        "step": "finetune", "method": cfg.method, "model": str(slm.spec),
        "params": slm.n_params, "trainable_params": adapters.trainable_params(net),
        "data": info, "planned_steps": steps, "steps": rep.steps, "tokens": rep.tokens,
        "stopped_early": rep.steps < steps, "tokens_per_s": round(rep.tokens_per_s, 1),
        "train_time_s": round(rep.time_s, 1), "world_size": rep.world_size,
        "parallel": rep.parallel, "state_bytes_per_rank": rep.state_bytes,
        "val_loss_before": ev[0]["val_loss"] if ev else None,
        "val_ppl_before": ev[0]["val_ppl"] if ev else None,
        "val_loss_after": after["val_loss"] if after else None,
        "val_ppl_after": after["val_ppl"] if after else None,
        "best_step": best["step"] if best else None,
        "loss_curve": [{k: r[k] for k in ("step", "tokens", "loss", "lr", "step_s") if k in r}
                       for r in rep.loss_curve],
        "eval_curve": [{k: r[k] for k in ("step", "tokens", "val_loss", "val_ppl")} for r in ev],
        "peak_rss_bytes": peak_rss(),
        "resumed_from": rep.resumed_from, "config": cfg.model_dump(),
        "time_s": round(time.time() - t0, 1),
    }


def _write_outputs(slm, net, cfg, work: Path, out: Path, fingerprint: dict, report: dict,
                   overwrite: bool) -> None:
    """Adapter, merged model, history and report into ``out`` at once (slmkit.step)."""
    adapter_dir = merged = None
    if cfg.method != "full":
        adapter_dir = adapters.save_adapter(
            net, work / "adapter", str(slm.spec), fingerprint, cfg.method,
            quant={"format": cfg.quant_format, "group": cfg.quant_group}
            if cfg.method == "qlora" else None)
        report["adapter_bytes"] = sum(p.stat().st_size for p in adapter_dir.glob("*.safetensors"))
    if cfg.merge or cfg.method == "full":
        merged = SLM(adapters.merge(net), slm.tokenizer, slm.spec, slm.meta, slm.path)
        for p in merged.model.parameters():
            p.requires_grad_(False)

    def finish(tmp: Path) -> None:
        if merged is not None:
            report["bytes"] = dir_bytes(tmp)
        if adapter_dir is not None:
            adapter_dir.rename(tmp / "adapter")
    write_outputs(merged, out, step="finetune", config=cfg.model_dump(), report=report,
                  history=_brief(report), overwrite=overwrite, before_report=finish)
    shutil.rmtree(work, ignore_errors=True)


def _brief(report: dict) -> dict:
    """The report without its long curves (for the history in slmkit.json)."""
    return {k: v for k, v in report.items() if k not in ("loss_curve", "eval_curve", "config")}
