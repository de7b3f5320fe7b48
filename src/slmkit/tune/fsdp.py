"""Fully sharded data parallel (FSDP2) training for :func:`slmkit.tune.loop.train`.

With ``TrainConfig(parallel="fsdp")`` under ``torchrun --nproc-per-node K`` each rank
keeps 1/K of every parameter, of its gradient and of its AdamW moments: about
16/K bytes per fp32 trainable parameter instead of DDP's 16 (a full replica, full
gradients and two full moments on every rank).

    sharded = Sharded(model, world)       # the model's own weight storage is freed
    loss, metrics = sharded(loss_fn, batch)
    ...
    sharded.restore()                     # the full trained weights are back in ``model``

``torch.distributed.fsdp.fully_shard`` is applied to a copy of the module tree that
shares the model's tensors: one group per decoder layer, and a root group holding
the rest (embeddings, final norm, output head, distillation projections). The
caller's model keeps its classes and hooks and gets plain full weights back at the
end, so saving, merging and inference see no wrapper.

The loss functions call the decoder backbone and read the output head's weight
directly (the fused chunked loss), never the model's own forward. So the root of
the copy is a module whose forward runs the loss function: FSDP's root hooks gather
the root group (the tied embedding / head matrix among it) before the loss and
reduce-scatter its gradients after the backward; each layer gathers its weights
in its own forward and again for its backward. Gradients are averaged over ranks
by the reduce-scatter, as DDP's all-reduce does.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import SlmError
from ..models.arch import all_decoder_layers

_ROOT = "model."                    # prefix of the model's names inside the root module


class _LossRoot(nn.Module):
    """Runs ``fn(model, *args)`` as its forward, so FSDP's root hooks surround it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


def check_shardable(model: nn.Module) -> None:
    """FSDP here trains all weights; adapter models train data parallel (DDP)."""
    if any(hasattr(m, "peft_config") for m in model.modules()):
        raise SlmError("FSDP trains all weights of a model, not LoRA/DoRA/QLoRA adapters",
                       "drop --fsdp: adapters train data parallel (DDP)")


def _by_index(sd: dict) -> dict:
    """An optimizer state dict keyed by parameter names -> torch's layout (keyed 0, 1, ...)."""
    order = {n: i for i, n in enumerate(n for g in sd["param_groups"] for n in g["params"])}
    return {"state": {order[n]: s for n, s in sd["state"].items()},
            "param_groups": [{**g, "params": [order[n] for n in g["params"]]}
                             for g in sd["param_groups"]]}


def _by_name(sd: dict, names: list[str]) -> dict:
    """Inverse of :func:`_by_index`; ``names`` in the optimizer's parameter order."""
    return {"state": {names[i]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                             for g in sd["param_groups"]]}


class Sharded:
    """A model's training copy sharded over the ranks of the default process group.

    Args:
        model: the module to train (an HF CausalLM, or a wrapper holding one and
            other trainable modules); its parameters must be equal on every rank.
        world: number of ranks.
    """

    def __init__(self, model: nn.Module, world: int):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        check_shardable(model)
        self.model = model
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        self.root = _LossRoot(copy.deepcopy(model, shared))
        mesh = init_device_mesh(next(model.parameters()).device.type, (world,))
        for layer in all_decoder_layers(self.root):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.root, mesh=mesh)
        self.release()

    def __call__(self, fn, *args):
        """``fn(model, *args)`` on the sharded copy (every rank must call it)."""
        return self.root(fn, *args)

    def trainable(self) -> dict[str, nn.Parameter]:
        """The sharded trainable parameters, under the model's own names."""
        return {n: p for n, p in self.root.model.named_parameters() if p.requires_grad}

    def release(self) -> None:
        """Free the model's own copy of the weights (the shards hold them)."""
        for p in self.model.parameters():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def full_state(self, rank0_only: bool) -> dict[str, torch.Tensor]:
        """Full (unsharded) weights by the model's names; with ``rank0_only`` only rank 0
        receives them (the others get an empty dict). Every rank must call it."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)
        sd = get_model_state_dict(self.root, options=StateDictOptions(
            full_state_dict=True, cpu_offload=rank0_only))
        return {n.removeprefix(_ROOT): t for n, t in sd.items()}

    @torch.no_grad()
    def restore(self, rank0_only: bool = False) -> None:
        """Put the full current weights into the model (on rank 0 only, or on all ranks)."""
        full = self.full_state(rank0_only)
        if full:
            for n, p in self.model.named_parameters():
                p.data = full[n]

    @contextmanager
    def gathered(self):
        """Full weights in the model on rank 0 for the duration of the block (evaluation)."""
        self.restore(rank0_only=True)
        try:
            yield
        finally:
            self.release()

    def full_trainable(self, names) -> dict[str, torch.Tensor]:
        """Full weights of the trainable parameters ``names`` on rank 0 (empty elsewhere)."""
        full = self.full_state(rank0_only=True)
        return {n: full[n] for n in names} if full else {}

    def full_optimizer(self, opt: torch.optim.Optimizer) -> dict:
        """The full optimizer state in torch's layout (what an unsharded run's
        ``opt.state_dict()`` holds) on rank 0, empty elsewhere."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_optimizer_state_dict)
        osd = get_optimizer_state_dict(self.root, opt, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        return _by_index(osd) if osd.get("param_groups") else {}

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Full weights by the model's names -> this rank's shards."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict)
        set_model_state_dict(self.root, {_ROOT + n: t for n, t in tensors.items()},
                             options=StateDictOptions(full_state_dict=True, strict=False))

    def load_optimizer(self, optim: dict, opt: torch.optim.Optimizer) -> None:
        """A full optimizer state dict in torch's layout -> this rank's shards of it."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_optimizer_state_dict)
        fqn = {id(p): n for n, p in self.root.named_parameters()}
        names = [fqn[id(p)] for g in opt.param_groups for p in g["params"]]
        set_optimizer_state_dict(self.root, opt, _by_name(optim, names),
                                 options=StateDictOptions(full_state_dict=True))
