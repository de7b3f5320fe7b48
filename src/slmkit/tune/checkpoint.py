"""Checkpoints of the training loop, written atomically and resumed exactly.

``work_dir/checkpoints/step-NNNNNNN/`` holds the trainable parameters
(``params.safetensors``), the optimizer and RNG states (``trainer.pt``, read back
with ``weights_only=True``) and ``state.json`` with the step, data position and the
curves so far. Under FSDP they hold the full weights and optimizer state, in the
same files as an unsharded run (either kind resumes the other's).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..errors import SlmError
from ..outputs import clean_stale_in, disk_full, remove, temp_path
from .config import TrainConfig
from .distributed import is_main, note
from .state import RunProgress, TrainState

CKPT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2


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


def save_checkpoint(work_dir: Path, params, optim, state: dict, rngs: list,
                    eval_state: dict | None = None) -> Path | None:
    """Write one checkpoint atomically (temp dir + rename) from rank 0; keep the newest few.

    Args:
        params: full trainable tensors by name, or a function returning them.
        optim: the optimizer's ``state_dict()`` (torch's layout, parameters by index), or
            a function returning it.
        eval_state: what the eval function keeps between calls (its ``state_dict()``:
            tensors and numbers), restored on resume.

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
        _write_checkpoint(tmp, main, params, optim, state, rngs, eval_state)
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


def _write_checkpoint(tmp: Path, main: bool, params, optim, state: dict, rngs: list,
                      eval_state: dict | None = None) -> None:
    """The checkpoint's files into ``tmp`` (rank 0 writes; every rank gathers)."""
    tensors = params() if callable(params) else params
    if main:
        save_file({n: p.detach().contiguous() for n, p in tensors.items()},
                  str(tmp / "params.safetensors"))
    del tensors
    blob = {"optimizer": optim() if callable(optim) else optim, "rng": rngs,
            "eval_state": eval_state or {}}
    if not main:
        return
    torch.save(blob, tmp / "trainer.pt")
    del blob
    (tmp / "state.json").write_text(json.dumps(state, indent=1))


def load_checkpoint(path: Path, params: dict, opt, cfg: TrainConfig, rank: int,
                    sharded=None) -> dict:
    """Restore parameters, optimizer and RNG from ``path`` (into this rank's shards when
    ``sharded``, a :class:`slmkit.tune.fsdp.Sharded`); returns its state dict (with the
    eval function's saved state under ``eval_state``)."""
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
    state["eval_state"] = blob.get("eval_state") or {}
    return state


def _py_rng_from_json(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


# ---------------------------------------------------------------- one run's checkpoints

def checkpoint_run(st: TrainState) -> None:
    """Checkpoint the run where it is (every rank calls this; rank 0 writes)."""
    rngs = [_rng_state()]
    if st.world > 1:
        rngs = [None] * st.world
        dist.all_gather_object(rngs, _rng_state())
    run = st.run
    state = {"step": run.step, "position": run.position, "tokens": run.tokens,
             "time_s": run.time_s, "loss_curve": run.loss_curve, "eval_curve": run.eval_curve,
             "py_rng": list(random.getstate()), "curve_fingerprint": st.cfg.curve_fingerprint(),
             "config": st.cfg.model_dump(mode="json"), "world_size": st.world}
    # what the eval function keeps between calls (early stopping's best weights)
    kept = st.eval_fn.state_dict() if is_main() and hasattr(st.eval_fn, "state_dict") else None
    if st.sharded is not None:               # every rank helps gather the full tensors
        save_checkpoint(st.work_dir, partial(st.sharded.full_trainable, list(st.params)),
                        partial(st.sharded.full_optimizer, st.opt), state, rngs, kept)
    elif is_main():
        save_checkpoint(st.work_dir, st.params, st.opt.state_dict(), state, rngs, kept)


def resume_run(st: TrainState) -> int | None:
    """Continue from the newest checkpoint in ``st.work_dir``; the step it was at, or None."""
    ckpts = checkpoint_dirs(st.work_dir)
    if not ckpts:
        return None
    state = load_checkpoint(ckpts[-1], st.params, st.opt, st.cfg, st.rank, st.sharded)
    for k in RunProgress.FIELDS:
        setattr(st.run, k, state[k])
    if state["eval_state"] and hasattr(st.eval_fn, "load_state_dict"):
        st.eval_fn.load_state_dict(state["eval_state"])
    note(f"resuming from step {st.run.step} of {st.cfg.max_steps} (checkpoint {ckpts[-1]})")
    return st.run.step
