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
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..device import Device
from ..device import autocast_type, model_device, resolve_device, to_device
from ..errors import SlmError
from ..outputs import clean_stale_in, disk_full, remove, temp_path
from .attention import blocked_attention_for
from .heap import reuse_heap
from .schedule import lr_factor

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]
CKPT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
# Below these, compiling (tens of seconds) costs more than it saves (~20% of a step).
COMPILE_MIN_PARAMS = 50_000_000
COMPILE_MIN_STEPS = 20
# Fields that change the loss curve: a checkpoint made with other values cannot be resumed.
_CURVE_FIELDS = ("lr", "warmup_steps", "schedule", "min_lr_ratio", "weight_decay", "batch_size",
                 "grad_accum", "max_grad_norm", "bf16", "bf16_base", "seed", "shuffle",
                 "adam_betas")
PARALLEL_HELP = ("with WORLD_SIZE > 1 (torchrun): ddp keeps a full copy of the weights, "
                 "gradients and optimizer state on every rank; fsdp shards them, so each of K "
                 "ranks holds ~1/K (for models whose training state does not fit one process; "
                 "all weights train, not LoRA)")


class TrainConfig(BaseModel):
    """Settings of one training run (optimizer, schedule, batching, checkpoints)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    warmup_steps: int = Field(10, ge=0)
    max_steps: int = Field(100, ge=1, description="optimizer steps")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay on matrices (not norms/biases)")
    adam_betas: tuple[float, float] = (0.9, 0.95)
    batch_size: int = Field(4, ge=1, description="sequences per micro-batch (used by batch builders)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step and rank")
    max_grad_norm: float = Field(1.0, ge=0, description="clip total grad norm; 0 = off")
    bf16: bool = Field(True, description="bf16 autocast (weights stay fp32)")
    bf16_base: bool = Field(True, description="with bf16: hold the frozen weights (embeddings, "
                            "norms, head) in bf16 while training, so hidden states run in "
                            "bf16 as in the checkpoint's own dtype; False = fp32 hidden "
                            "states (only the frozen Linear weights in bf16: plain "
                            "autocast's numbers)")
    grad_checkpointing: bool = False
    compile: bool | None = Field(None, description="torch.compile each decoder layer; None = "
                                 f"when the model has >= {COMPILE_MIN_PARAMS // 10**6}M "
                                 f"parameters and the run >= {COMPILE_MIN_STEPS} steps")
    blocked_attention: bool = Field(True, description="causal attention in query blocks that "
                                    "skip the keys after them (tune/attention.py) while "
                                    "training; False = PyTorch's sdpa kernels")
    shuffle: bool = Field(True, description="reshuffle batch order each epoch (seeded)")
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description=PARALLEL_HELP)
    eval_every: int = Field(0, ge=0, description="steps between evals; 0 = only at the end")
    eval_at_start: bool = Field(True, description="also evaluate before the first step")
    ckpt_every: int = Field(50, ge=0, description="steps between checkpoints; 0 = only at the end")
    log_every: int = Field(1, ge=1, description="steps between progress-bar updates")
    threads: int | None = Field(None, ge=1, description="CPU threads; default $OMP_NUM_THREADS "
                                "or all cores split over this machine's ranks")
    seed: int = 0

    def curve_fingerprint(self) -> str:
        d = {k: getattr(self, k) for k in _CURVE_FIELDS}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainReport:
    """What a training run did; ``to_dict()`` goes into ``report.json``."""

    steps: int = 0
    tokens: int = 0                        # input tokens processed, all ranks, whole run
    time_s: float = 0.0                    # wall time of training steps (this process' runs)
    tokens_per_s: float = 0.0              # tokens / time_s of the last (resumed) segment
    loss_curve: list[dict] = field(default_factory=list)   # {step, tokens, loss, lr, ...}
    eval_curve: list[dict] = field(default_factory=list)   # {step, tokens, **eval_fn()}
    resumed_from: int | None = None
    world_size: int = 1
    parallel: str = "none"                 # "ddp" or "fsdp" under torchrun
    state_bytes: int = 0                   # trainable params + grads + optimizer state, one rank

    @property
    def final_loss(self) -> float | None:
        return self.loss_curve[-1]["loss"] if self.loss_curve else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["final_loss"] = self.final_loss
        return d


# ---------------------------------------------------------------- data

class BlockBatches:
    """Packed token blocks (N, T) as a dataset of batches {'input_ids': (B, T)}.

    The last partial batch is dropped so every batch has the same shape.
    """

    def __init__(self, blocks: torch.Tensor, batch_size: int):
        if blocks.ndim != 2 or len(blocks) < batch_size:
            raise SlmError(f"need at least {batch_size} token blocks for one batch, got "
                           f"{len(blocks) if blocks.ndim == 2 else 0}",
                           "add data, or lower the batch size or sequence length")
        self.blocks, self.batch_size = blocks, batch_size

    def __len__(self) -> int:
        return len(self.blocks) // self.batch_size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        b = self.batch_size
        return {"input_ids": self.blocks[i * b:(i + 1) * b]}


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


# ---------------------------------------------------------------- distributed

def dist_setup() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed from torchrun's env when needed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (or when not distributed): the process that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _threads(cfg: "TrainConfig", world: int) -> int:
    """cfg.threads, else $OMP_NUM_THREADS, else the cores shared by this node's ranks."""
    if cfg.threads:
        return cfg.threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def _all_mean(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


def _sync_params(params: list[nn.Parameter], world: int) -> None:
    if world > 1:
        for p in params:
            dist.broadcast(p.data, src=0)


def _average_grads(params: list[nn.Parameter], world: int) -> None:
    """Mean of each gradient over ranks, one flat all-reduce."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (its shard for an FSDP DTensor)."""
    from torch.distributed.tensor import DTensor
    return t.to_local() if isinstance(t, DTensor) else t


def _clip_grads(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale gradients to total L2 norm <= ``max_norm`` (the norm over all shards under
    FSDP); returns the norm before clipping."""
    from torch.distributed.tensor import DTensor
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def state_bytes(params: dict, opt) -> int:
    """Bytes this rank holds for the trainable parameters, their gradients (same size)
    and the optimizer state."""
    n = sum(2 * _local(p).nbytes for p in params.values())
    return n + sum(_local(v).nbytes for st in opt.state.values() for v in st.values()
                   if torch.is_tensor(v))


def note(text: str) -> None:
    """One line on stderr from rank 0."""
    if is_main():
        from rich.console import Console
        Console(stderr=True, highlight=False).print(f"[yellow]note:[/] {text}")


def use_fsdp(cfg: "TrainConfig", world: int) -> bool:
    """Whether this run shards (``parallel="fsdp"`` and more than one rank)."""
    if cfg.parallel != "fsdp":
        return False
    if world == 1:
        note("fsdp has no effect in one process; run under torchrun --nproc-per-node K")
    return world > 1


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


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing in every HF model inside ``model``; returns how many."""
    n, kw = 0, {"use_reentrant": False}
    for m in model.modules():
        if not getattr(m, "supports_gradient_checkpointing", False):
            continue
        if hasattr(m, "activation_checkpointing_enable"):          # transformers >= 5.x
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        elif hasattr(m, "gradient_checkpointing_enable"):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        else:
            continue
        n += 1
    return n


def all_decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of every HF CausalLM inside ``model`` (a PEFT model, or a
    wrapper holding a student), found through the architecture table."""
    from transformers import PreTrainedModel

    from ..models.arch import ARCHS, decoder_layers
    found = []
    for m in model.modules():
        if (isinstance(m, PreTrainedModel) and getattr(m.config, "model_type", None) in ARCHS
                and m.get_output_embeddings() is not None):       # the CausalLM, not its backbone
            found.extend(decoder_layers(m))
    return found


def should_compile(model: nn.Module, cfg: "TrainConfig") -> bool:
    if cfg.compile is not None:
        return cfg.compile
    from ..models.io import count_params
    return (count_params(model) >= COMPILE_MIN_PARAMS
            and cfg.max_steps * cfg.grad_accum >= COMPILE_MIN_STEPS)


@contextmanager
def compiled_layers(model: nn.Module, enabled: bool):
    """Compile the decoder layers in place for the duration of the block, then undo it;
    the output head's cross-entropy runs as a compiled kernel meanwhile (``compiled_ce``).

    If compiling fails (no C compiler, an unsupported op), dynamo falls back to eager
    for that layer and training goes on at eager speed.
    """
    layers = all_decoder_layers(model) if enabled else []
    if not layers:
        yield 0
        return
    import torch._dynamo

    from .losses import compiled_ce
    suppress = torch._dynamo.config.suppress_errors
    torch._dynamo.config.suppress_errors = True
    for layer in layers:
        layer.compile()
    try:
        with compiled_ce():
            yield len(layers)
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
        torch._dynamo.config.suppress_errors = suppress


@contextmanager
def frozen_weights_in_bf16(model: nn.Module, enabled: bool, whole_base: bool = False):
    """Hold frozen fp32 weights in bf16 for the block and put the fp32 tensors back
    afterwards. Trainable weights stay fp32 (they are the optimizer's master copy), and
    so do buffers (a quantized base's codes and scales, rotary frequencies).

    By default only the decoder layers' frozen Linear weights: under bf16 autocast every
    matmul casts its fp32 weight to bf16 anyway, on every forward, so the bf16 copy gives
    the same numbers without those casts (5% of a LoRA step on SmolLM2-135M).

    ``whole_base`` takes every frozen weight (embeddings, norms, output head too): the
    hidden states then run in bf16 between the layers, as they do when the model runs in
    the bf16 its checkpoint ships in. Not the same numbers as fp32 hidden states (the
    held-out perplexity after a LoRA run moved by 0.03), and the norms, residual adds
    and rotary embeddings move half the bytes: their kernels took 0.30 s instead of
    0.44 s of a 4 x 512 LoRA step on SmolLM2-135M, about 2% of the step on average.

    Everything that runs the model inside the block must run under bf16 autocast on the
    CPU, as the loop's training steps and evaluations do (weights on other devices are
    left alone). A weight whose fp32 values are all bf16 numbers (Gemma 3, SmolLM2: they
    ship in bf16) is held only as bf16 in the block and upcast again at its end, the same
    values; the fp32 values of the other frozen weights (Gemma 3 270M's, dequantized from
    its Q4_K_M file) wait in a temporary file meanwhile and are read back at the end, so
    training holds the frozen base once, in bf16 (on Gemma 3 270M, 0.54 GB instead of
    1.61 GB).
    """
    saved = []
    if enabled and whole_base:
        weights = list(model.parameters())                  # shared (tied) weights once
    elif enabled:
        weights = [m.weight for layer in all_decoder_layers(model) for m in layer.modules()
                   if isinstance(m, nn.Linear)]
    else:
        weights = []
    spill: dict[str, torch.Tensor] = {}
    for w in weights:
        if not w.requires_grad and w.dtype == torch.float32 and w.device.type == "cpu":
            half = w.data.to(torch.bfloat16)
            # a weight that holds bf16 values (a checkpoint shipped in bf16) comes back
            # exactly from its bf16 copy; the others' fp32 values wait on disk
            key = None if _bf16_exact(w.data, half) else str(len(spill))
            if key is not None:
                spill[key] = w.data
            saved.append((w, key))
            w.data = half
    stored = _spill(spill)
    del spill
    try:
        yield len(saved)
    finally:
        if isinstance(stored, Path):
            from safetensors.torch import load_file
            back = load_file(str(stored))
            shutil.rmtree(stored.parent, ignore_errors=True)
        else:
            back = stored
        for w, key in saved:
            w.data = w.data.float() if key is None else back[key]


def _spill(tensors: dict[str, torch.Tensor]):
    """``tensors`` written to a temporary safetensors file (its path), so that their memory
    is free while training; the tensors themselves where the disk refuses."""
    if not tensors:
        return tensors
    import tempfile

    from safetensors.torch import save_file
    path = Path(tempfile.mkdtemp(prefix="slmkit-frozen-")) / "fp32.safetensors"
    try:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(path))
    except OSError:
        shutil.rmtree(path.parent, ignore_errors=True)
        return dict(tensors)
    return path


def _bf16_exact(full: torch.Tensor, half: torch.Tensor, step: int = 1 << 22) -> bool:
    """Whether fp32 ``full`` equals its bf16 copy ``half`` (compared in slices: no
    full-size temporary)."""
    a, b = full.reshape(-1), half.reshape(-1)
    return all(torch.equal(a[i:i + step], b[i:i + step].float())
               for i in range(0, a.numel(), step))


# ---------------------------------------------------------------- checkpoints

def checkpoint_dirs(work_dir: Path) -> list[Path]:
    """Complete checkpoints (they have ``state.json``), oldest first."""
    root = Path(work_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step-\d+", p.name)
             and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


def save_checkpoint(work_dir: Path, params, optim, state: dict, rngs: list) -> Path | None:
    """Write one checkpoint atomically (temp dir + rename) from rank 0; keep the newest few.

    Args:
        params: full trainable tensors by name, or a function returning them.
        optim: the optimizer's ``state_dict()`` (torch's layout, parameters by index), or
            a function returning it.

    Functions are called one after the other on every rank that calls this (under FSDP
    they gather the shards, so rank 0 holds only one of the two in full at a time); only
    rank 0 writes. Returns the checkpoint directory (None on other ranks).
    """
    main = is_main()
    root = Path(work_dir) / CKPT_DIR
    final = root / f"step-{state['step']:07d}"
    tmp = temp_path(final)
    if main:
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_in(root)                  # what a killed run left half-written
        remove(tmp)
        tmp.mkdir()
    try:
        _write_checkpoint(tmp, main, params, optim, state, rngs)
    except OSError as exc:
        remove(tmp)
        if not disk_full(exc):
            raise
        done = checkpoint_dirs(work_dir)
        kept = f"the previous checkpoint {done[-1]} is intact" if done else \
            "there is no earlier checkpoint"
        raise SlmError(f"no space left on the device while writing checkpoint {final.name} "
                       f"in {root}; nothing of it was kept and {kept}",
                       "free some space and run the same command again to resume") from None
    if not main:
        return None
    remove(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(work_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(tmp: Path, main: bool, params, optim, state: dict, rngs: list) -> None:
    """The checkpoint's files into ``tmp`` (rank 0 writes; every rank gathers)."""
    from safetensors.torch import save_file
    tensors = params() if callable(params) else params
    if main:
        save_file({n: p.detach().contiguous() for n, p in tensors.items()},
                  str(tmp / "params.safetensors"))
    del tensors
    blob = {"optimizer": optim() if callable(optim) else optim, "rng": rngs}
    if not main:
        return
    torch.save(blob, tmp / "trainer.pt")
    del blob
    (tmp / "state.json").write_text(json.dumps(state, indent=1))


def load_checkpoint(path: Path, params: dict, opt, cfg: TrainConfig, rank: int,
                    sharded=None) -> dict:
    """Restore parameters, optimizer and RNG from ``path`` (into this rank's shards when
    ``sharded``, a :class:`slmkit.tune.fsdp.Sharded`); returns its state dict."""
    from safetensors.torch import load_file
    state = json.loads((path / "state.json").read_text())
    if state.get("curve_fingerprint") != cfg.curve_fingerprint():
        raise SlmError(f"checkpoint {path} was made with other training settings "
                       f"({state.get('config')})", "use the same settings, another output "
                       "directory, or turn resume off")
    saved = load_file(str(path / "params.safetensors"))
    if set(saved) != set(params):
        raise SlmError(f"checkpoint {path} holds other trainable parameters than this model",
                       "use another output directory or turn resume off")
    if sharded is not None:
        sharded.load_weights(saved)
    else:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
    del saved
    blob = torch.load(path / "trainer.pt", weights_only=True)
    if sharded is not None:
        sharded.load_optimizer(blob.pop("optimizer"), opt)
    else:
        opt.load_state_dict(blob.pop("optimizer"))
    rngs = blob["rng"]
    torch.set_rng_state(rngs[min(rank, len(rngs) - 1)]["torch"])
    random.setstate(_py_rng_from_json(state["py_rng"]))
    return state


def _py_rng_from_json(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


# ---------------------------------------------------------------- the loop

@dataclass
class _Run:
    """Mutable state of one run (what a checkpoint records)."""

    step: int = 0
    position: int = 0         # global micro-batches consumed (all ranks)
    tokens: int = 0
    time_s: float = 0.0
    loss_curve: list = field(default_factory=list)
    eval_curve: list = field(default_factory=list)


def _micro_step(forward, batches, cfg, run, m, rank, world, autocast, device):
    """Forward + backward of one micro-batch; returns (loss, metrics, tokens)."""
    g = run.position + m * world + rank
    batch = batches[batch_index(g, len(batches), cfg.seed, cfg.shuffle)]
    batch = to_device(batch, device)
    with autocast:
        loss, metrics = forward(batch)
    if not torch.isfinite(loss):
        raise SlmError(f"training loss became {loss.item()} at step {run.step + 1}",
                       "lower the learning rate or check the data")
    (loss / cfg.grad_accum).backward()
    return float(loss.detach()), metrics, batch_tokens(batch)


def _optimizer_step(forward, batches, cfg, run, opt, params, rank, world, sharded) -> dict:
    """One optimizer step over ``grad_accum`` micro-batches per rank; returns its log row."""
    lr = cfg.lr * lr_factor(run.step, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                            schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio)
    for group in opt.param_groups:
        group["lr"] = lr
    device = next(iter(params.values())).device
    autocast = torch.autocast(autocast_type(device), dtype=torch.bfloat16, enabled=cfg.bf16)
    losses, sums, tokens = [], {}, 0
    for m in range(cfg.grad_accum):
        loss, metrics, ntok = _micro_step(forward, batches, cfg, run, m, rank, world, autocast,
                                          device)
        losses.append(loss)
        tokens += ntok
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    plist = list(params.values())
    if sharded is None:                      # FSDP reduce-scattered them in the backward
        _average_grads(plist, world)
    gnorm = _clip_grads(plist, cfg.max_grad_norm or float("inf"))
    opt.step()
    opt.zero_grad(set_to_none=True)
    keys = sorted(sums)
    vals = _all_mean([sum(losses) / len(losses), tokens * world, float(gnorm)]
                     + [sums[k] / cfg.grad_accum for k in keys], world)
    run.step += 1
    run.position += cfg.grad_accum * world
    run.tokens += int(round(vals[1]))
    row = {"step": run.step, "tokens": run.tokens, "loss": vals[0], "lr": lr,
           "grad_norm": vals[2]}
    row.update({k: v for k, v in zip(keys, vals[3:])})
    return row


def _evaluate(model, eval_fn, run, sharded=None, bf16: bool = False) -> None:
    """``eval_fn`` on rank 0 (under bf16 autocast with ``bf16``: the frozen weights may be
    bf16 then); under FSDP every rank first helps gather the full weights."""
    if eval_fn is None or (sharded is None and not is_main()):
        return
    with sharded.gathered() if sharded is not None else nullcontext():
        if not is_main():
            return
        was = model.training
        model.eval()
        with (torch.no_grad(), torch.compiler.set_stance("force_eager"),
              torch.autocast(autocast_type(model_device(model)), dtype=torch.bfloat16,
                             enabled=bf16)):
            out = eval_fn()
        model.train(was)
    run.eval_curve.append({"step": run.step, "tokens": run.tokens,
                           **{k: float(v) for k, v in out.items()}})


def _checkpoint(work_dir, params, opt, cfg, run, world, sharded=None) -> None:
    rngs = [_rng_state()]
    if world > 1:
        rngs = [None] * world
        dist.all_gather_object(rngs, _rng_state())
    state = {"step": run.step, "position": run.position, "tokens": run.tokens,
             "time_s": run.time_s, "loss_curve": run.loss_curve, "eval_curve": run.eval_curve,
             "py_rng": list(random.getstate()), "curve_fingerprint": cfg.curve_fingerprint(),
             "config": cfg.model_dump(mode="json"), "world_size": world}
    if sharded is not None:                  # every rank helps gather the full tensors
        save_checkpoint(work_dir, partial(sharded.full_trainable, list(params)),
                        partial(sharded.full_optimizer, opt), state, rngs)
    elif is_main():
        save_checkpoint(work_dir, params, opt.state_dict(), state, rngs)


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
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


def _stop_requested(run, world: int) -> bool:
    """True when the eval just run returned a truthy ``stop`` (early stopping); every
    rank follows rank 0's answer."""
    last = run.eval_curve[-1] if run.eval_curve else {}
    flag = torch.tensor([float(last.get("step") == run.step and last.get("stop", 0) > 0)])
    if world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _resume(work_dir, params, opt, cfg, rank, run, sharded=None) -> int | None:
    ckpts = checkpoint_dirs(work_dir)
    if not ckpts:
        return None
    state = load_checkpoint(ckpts[-1], params, opt, cfg, rank, sharded)
    for k in ("step", "position", "tokens", "time_s", "loss_curve", "eval_curve"):
        setattr(run, k, state[k])
    return run.step


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
            ends training after that eval (early stopping).
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
    torch.set_num_threads(_threads(cfg, world))
    try:
        with (compiled_layers(model, compile_ and not fsdp), reuse_heap(),
              blocked_attention_for(model, cfg.blocked_attention and device.type == "cpu"),
              frozen_weights_in_bf16(model, cfg.bf16 and not fsdp, cfg.bf16_base)):
            return _train(model, batches, loss_fn, cfg, work_dir, eval_fn, resume, progress,
                          rank, world, fsdp)
    finally:
        torch.set_num_threads(threads)


def train_device(cfg: TrainConfig, world: int) -> torch.device:
    """Where this rank trains: ``cfg.device``; under torchrun on CUDA, the rank's own GPU."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _setup(model, loss_fn, cfg, world, fsdp):
    """(trainable params, Sharded or None, forward(batch) -> (loss, metrics))."""
    params = trainable(model)
    if not params:
        raise SlmError("the model has no trainable parameters", "unfreeze some parameters")
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    _sync_params(list(params.values()), world)
    model.train()
    if not fsdp:
        return params, None, partial(loss_fn, model)
    from .fsdp import Sharded
    sharded = Sharded(model, world)
    return sharded.trainable(), sharded, partial(sharded, loss_fn)


def _train(model, batches, loss_fn, cfg, work_dir, eval_fn, resume, progress, rank, world, fsdp):
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    params, sharded, forward = _setup(model, loss_fn, cfg, world, fsdp)
    opt, run = make_optimizer(params, cfg), _Run()
    resumed = _resume(work_dir, params, opt, cfg, rank, run, sharded) if resume else None
    if resumed is None and cfg.eval_at_start:
        _evaluate(model, eval_fn, run, sharded, cfg.bf16)
    seg_tokens, seg_time = 0, 0.0
    with _progress(progress and is_main(), cfg.max_steps, run.step) as bar:
        while run.step < cfg.max_steps:
            t0, tok0 = time.perf_counter(), run.tokens
            row = _optimizer_step(forward, batches, cfg, run, opt, params, rank, world, sharded)
            dt = time.perf_counter() - t0
            run.time_s += dt
            seg_time += dt
            seg_tokens += run.tokens - tok0
            row["step_s"] = dt                 # wall time of this step (steady-state speed)
            run.loss_curve.append(row)
            if bar is not None and (run.step % cfg.log_every == 0 or run.step == cfg.max_steps):
                _show(bar, run, row, seg_tokens / max(seg_time, 1e-9), cfg.max_steps)
            if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.max_steps:
                _evaluate(model, eval_fn, run, sharded, cfg.bf16)
                if _stop_requested(run, world):
                    break
            if cfg.ckpt_every and run.step % cfg.ckpt_every == 0 and run.step < cfg.max_steps:
                _checkpoint(work_dir, params, opt, cfg, run, world, sharded)
    if not run.eval_curve or run.eval_curve[-1]["step"] != run.step:
        _evaluate(model, eval_fn, run, sharded, cfg.bf16)
    _checkpoint(work_dir, params, opt, cfg, run, world, sharded)
    held = state_bytes(params, opt)
    if sharded is not None:
        del opt                              # free the moments before the full weights return
        sharded.restore()
    model.eval()
    return TrainReport(steps=run.step, tokens=run.tokens, time_s=run.time_s,
                       tokens_per_s=seg_tokens / seg_time if seg_time else 0.0,
                       loss_curve=run.loss_curve, eval_curve=run.eval_curve,
                       resumed_from=resumed, world_size=world, state_bytes=held,
                       parallel="fsdp" if sharded else ("ddp" if world > 1 else "none"))
