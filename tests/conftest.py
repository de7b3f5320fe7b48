"""Shared fixtures. Tests run offline and on tiny random models unless marked `real`."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped (not failed) on a machine without it."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to PyTorch")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny():
    """A fresh tiny Llama-family SLM (2 layers, hidden 64)."""
    from slmkit.models.tiny import tiny_slm
    return tiny_slm("llama")
