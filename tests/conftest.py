"""Shared fixtures. Tests run offline and on tiny random models unless marked `real`."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture
def tiny():
    """A fresh tiny Llama-family SLM (2 layers, hidden 64)."""
    from slmkit.models.tiny import tiny_slm
    return tiny_slm("llama")
