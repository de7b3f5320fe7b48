"""Tiny random models of every supported family, for tests and dry runs.

``tiny_slm("llama")`` builds a 2-layer model (hidden 64) with a small
byte-level BPE tokenizer trained on ``python-docs``; it runs every code path
of the real thing in milliseconds. The Gemma and Mistral families get a SentencePiece-style
BPE tokenizer with byte fallback instead (``<0x00>``..``<0xFF>``, U+2581 for
spaces, ``<start_of_turn>``/``<end_of_turn>``, no chat template), as the real
Gemma and Mistral models have.
"""
from __future__ import annotations

import torch

from ..data.corpora import python_docs
from ..paths import cache_dir
from .catalog import CATALOG, hf_config
from .io import SLM

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SP_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
SP_FAMILIES = ("gemma", "gemma3_text", "mistral")

# Per-family overrides that make a catalog config tiny.
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=512)
TINY_FAMILIES = {
    "llama": ("smollm2-135m", {}),
    "qwen2": ("qwen2.5-0.5b", {}),
    "gemma": ("gemma-2b", {"num_key_value_heads": 1}),
    "gemma3_text": ("gemma3-270m", {"num_key_value_heads": 1, "sliding_window": 64}),
    "phi3": ("phi-3-mini", {"num_key_value_heads": 4}),
    "stablelm": ("stablelm-2-1.6b", {"num_key_value_heads": 4}),
    "falcon": ("falcon-7b", {}),
    "mixtral": ("mixtral-8x7b", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "mistral": ("mixtral-8x7b", {"model_type": "mistral"}),    # Mixtral without the experts
}


def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with ChatML special tokens, cached on disk."""
    from transformers import PreTrainedTokenizerFast
    path = cache_dir() / f"tiny-tokenizer-{vocab_size}"
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(path)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((r["text"] for r in python_docs()), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML)
    tmp = path.with_name(path.name + ".tmp")
    fast.save_pretrained(tmp)
    tmp.rename(path) if not path.exists() else None
    return PreTrainedTokenizerFast.from_pretrained(path)


def tiny_sp_tokenizer(vocab_size: int = 512):
    """A SentencePiece-style BPE tokenizer with byte fallback (as Gemma's), cached on disk.

    Ids: the special tokens, the 256 byte tokens, then BPE pieces trained on
    ``python-docs`` with spaces written as U+2581; every merge of two pieces whose
    concatenation is a piece is listed, best (most frequent) first.
    """
    from transformers import PreTrainedTokenizerFast
    path = cache_dir() / f"tiny-sp-tokenizer-{vocab_size}"
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(path)
    from tokenizers import (AddedToken, Tokenizer, decoders, models, normalizers, processors,
                            trainers)
    learn = Tokenizer(models.BPE())
    learn.normalizer = normalizers.Replace(" ", "\u2581")
    n_pieces = vocab_size - len(SP_SPECIALS) - 256
    learn.train_from_iterator((r["text"] for r in python_docs()),
                              trainers.BpeTrainer(vocab_size=n_pieces, show_progress=False))
    pieces = sorted(learn.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(SP_SPECIALS + [f"<0x{b:02X}>" for b in range(256)])}
    for t, _ in pieces:
        vocab.setdefault(t, len(vocab))
    merges = [(t[:k], t[k:]) for t, _ in pieces for k in range(1, len(t))
              if t[:k] in vocab and t[k:] in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SP_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")
    tmp = path.with_name(path.name + ".tmp")
    fast.save_pretrained(tmp)
    tmp.rename(path) if not path.exists() else None
    return PreTrainedTokenizerFast.from_pretrained(path)


def tiny_config(family: str = "llama", **overrides):
    """A transformers config for a 2-layer model of ``family``."""
    name, extra = TINY_FAMILIES[family]
    cfg = dict(CATALOG[name].config)
    cfg.update(_TINY, **extra)
    if family == "falcon":      # falcon derives these from hidden size and multi_query
        for key in ("intermediate_size", "head_dim", "num_key_value_heads"):
            cfg.pop(key)
    cfg.update(overrides)
    return hf_config(cfg)


def tiny_slm(family: str = "llama", seed: int = 0, **overrides) -> SLM:
    """A randomly initialised tiny model of ``family`` with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM
    tok = tiny_sp_tokenizer() if family in SP_FAMILIES else tiny_tokenizer()
    overrides.setdefault("vocab_size", len(tok))
    cfg = tiny_config(family, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    # made in fp32, and saved so: tests compare logits across save and load
    return SLM(model, tok, f"tiny-{family}", {"source": f"tiny:{family}", "history": [],
                                             "dtype": "float32"})
