"""What the training-loop tests share: a learnable tiny dataset, one thread per process,
a loss that dies mid-run (for resume tests) and a free loopback port (for gloo ranks)."""
import socket

import pytest
import torch

from slmkit.data.batches import Batches


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")     # tiny models: threads only add overhead


def packed_batches(n_blocks=16, block=32, batch_size=2, seed=0) -> Batches:
    """A learnable pattern: a few random sequences repeated."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(3, 512, (4, block), generator=g)
    return Batches({"input_ids": base[torch.arange(n_blocks) % 4]}, batch_size)


def crash_at(call: int, loss_fn):
    """``loss_fn`` that raises KeyboardInterrupt on its ``call``-th call (a killed run)."""
    calls = {"n": 0}

    def crashing(model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return loss_fn(model, batch)
    return crashing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
