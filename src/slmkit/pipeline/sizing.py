"""Recipe figures that follow the base model and the data.

A shipped recipe runs on whatever base and data the user names, so its budgets
are written relative to them. In a recipe step, an option whose value is
``auto`` or a mapping is resolved before the first step runs:

- token budgets (``finetune.max_tokens``, ``distill.tokens``, ``distill.val_tokens``,
  ``prune.eval_tokens``, ``quantize.eval_tokens``, ``eval.max_eval_tokens``):
  ``{share: S, min: A, max: B}``: S times the tokens of the split the option reads
  (train for training, validation for held-out figures), clamped to [A, B];
- block counts (``finetune.max_val_blocks``, ``prune.nsamples``,
  ``quantize.calib_samples``): the same rule, in sequences of the step's length;
- sequence lengths (``seq_len``, ``prune.seqlen``): ``{min: A, max: B}``: the
  largest power of two in [A, B] at which the training split fills 4 batches and the
  validation split 2 sequences;
- ``prune.vocab_size``: ``{coverage: C, general: G}``: the tokens every text needs
  (the alphabet or byte tokens, and the special ones), the domain tokens that cover the
  share C of the domain text (by the base tokenizer), and G times as many of the most
  general tokens, rounded up to a multiple of 64;
- ``prune.target`` (depth, width): ``{decoder: F}``: keep the share F of the
  decoder layers' parameters; the embedding and output head are not counted, so the
  same recipe cuts the same share of a model whose embedding is most of it.

Every resolved figure is printed before the first step and kept in the build report.
Data too small for the recipe is refused here, with the minimum stated.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..compress.prune.vocab import select_tokens, tokenizer_json
from ..data import read_records, record_text, split, tokenize_records
from ..errors import SlmError
from ..models.arch import decoder_layers
from ..models.catalog import CATALOG
from ..models.io import load, load_tokenizer
from ..models.tiny import tiny_slm
from ..paths import cache_dir

# What kind of figure each adaptive option is, and which split it is measured on.
TOKENS, BLOCKS, SEQ, VOCAB, DECODER = "tokens", "blocks", "seq", "vocab", "decoder"
ADAPTIVE: dict[tuple[str, str], tuple[str, str]] = {
    ("finetune", "max_tokens"): (TOKENS, "train"),
    ("finetune", "seq_len"): (SEQ, "train"),
    ("finetune", "max_val_blocks"): (BLOCKS, "val"),
    ("distill", "tokens"): (TOKENS, "train"),
    ("distill", "seq_len"): (SEQ, "train"),
    ("distill", "val_tokens"): (TOKENS, "val"),
    ("prune", "vocab_size"): (VOCAB, "train"),
    ("prune", "target"): (DECODER, "train"),
    ("prune", "nsamples"): (BLOCKS, "train"),
    ("prune", "seqlen"): (SEQ, "train"),
    ("prune", "eval_tokens"): (TOKENS, "val"),
    ("quantize", "calib_samples"): (BLOCKS, "train"),
    ("quantize", "seq_len"): (SEQ, "train"),
    ("quantize", "eval_tokens"): (TOKENS, "val"),
    ("eval", "max_eval_tokens"): (TOKENS, "val"),
}
DEFAULTS = {TOKENS: {"share": 1.0, "min": 0, "max": None}, BLOCKS: {"share": 1.0, "min": 1,
                                                                    "max": None},
            SEQ: {"min": 64, "max": 512}, VOCAB: {"coverage": 0.999, "general": 1.0},
            DECODER: {}}
TRAIN_BATCHES = 4          # a sequence length must give the training split this many batches
VAL_BLOCKS = 2             # ... and the validation split this many sequences
# Which option holds a step's data, its sequence length and its batch size.
DATA_KEY = {"finetune": "data", "distill": "data", "prune": "calib", "quantize": "calib",
            "eval": "data"}
SEQ_KEY = {"finetune": "seq_len", "distill": "seq_len", "prune": "seqlen",
           "quantize": "seq_len"}


def is_adaptive(step: str, key: str, value) -> bool:
    return (step, key) in ADAPTIVE and (value == "auto" or isinstance(value, dict))


def rule(step: str, key: str, value) -> dict:
    """The rule's parameters: the recipe's mapping over the kind's defaults.

    Raises:
        ValueError: an unknown key or a value out of range (the recipe loader names
            the field and its line).
    """
    kind, _ = ADAPTIVE[(step, key)]
    given = {} if value == "auto" else dict(value)
    allowed = set(DEFAULTS[kind]) if kind != DECODER else {"decoder"}
    extra = set(given) - allowed
    if extra:
        raise ValueError(f"'{sorted(extra)[0]}' is not a key of this rule (allowed: "
                         f"{', '.join(sorted(allowed))})")
    r = {**DEFAULTS[kind], **given}
    for k, v in r.items():
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{k} must be a non-negative number, got {v!r}")
    if kind == DECODER and not 0 < r.get("decoder", 0) < 1:
        raise ValueError("needs `decoder: F`, the share of decoder parameters to keep, "
                         "0 < F < 1")
    if kind == VOCAB and not 0 < r["coverage"] <= 1:
        raise ValueError(f"coverage {r['coverage']} must be in (0, 1]")
    if r.get("max") is not None and r.get("min", 0) > r["max"]:
        raise ValueError(f"min {r['min']} is above max {r['max']}")
    return r


def placeholder(step: str, key: str, value):
    """A valid stand-in for an adaptive value, to check the rest of a step's options."""
    kind, _ = ADAPTIVE[(step, key)]
    r = rule(step, key, value)
    if kind == DECODER:
        return r["decoder"]
    if kind == VOCAB:
        return 1024
    return int(r.get("max") or max(r.get("min") or 0, 64))


# ---------------------------------------------------------------- what it measures

@dataclass
class DataStats:
    """Token counts of one data spec by the base tokenizer."""

    spec: str
    records: dict[str, int]
    tokens: dict[str, int]
    chars: dict[str, int]
    counts: Counter = field(default_factory=Counter, repr=False)   # train token frequencies

    def summary(self) -> dict:
        return {"records": self.records, "tokens": self.tokens, "chars": self.chars,
                "tokens_per_char": round(sum(self.tokens.values())
                                         / max(sum(self.chars.values()), 1), 4)}


def measure_data(spec: str, tokenizer) -> DataStats:
    """Tokens, characters and records of the train and validation splits of ``spec``."""
    train, val = split(read_records(spec))
    stats = DataStats(spec, {}, {}, {})
    for name, recs in (("train", train), ("val", val)):
        ids = tokenize_records(recs, tokenizer)
        stats.records[name] = len(recs)
        stats.tokens[name] = sum(len(d) for d in ids)
        stats.chars[name] = sum(len(record_text(r, tokenizer)) for r in recs)
        if name == "train":
            stats.counts = Counter(t for d in ids for t in d)
    return stats


@dataclass
class BaseShape:
    """Where a base model's parameters are: embedding (and untied head), decoder layers."""

    params: int
    embedding: int        # input embedding + output head when it is not tied
    decoder: int          # the decoder layers
    vocab: int
    hidden: int
    tied: bool

    def after_vocab(self, vocab: int) -> int:
        """Parameters once the vocabulary is cut to ``vocab`` tokens."""
        return self.params - (self.vocab - vocab) * self.hidden * (1 if self.tied else 2)


def base_shape(model) -> BaseShape:
    """Parameter layout of an HF model (a meta-device one is enough)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is None or head.weight is emb
    embedding = emb.numel() + (0 if tied else head.weight.numel())
    decoder = sum(p.numel() for p in decoder_layers(model).parameters())
    params = sum(p.numel() for p in model.parameters())     # shared ones once
    return BaseShape(params, embedding, decoder, emb.shape[0], emb.shape[1], tied)


def open_base(spec: str, seed: int = 0):
    """(tokenizer, meta-device model) of a base spec, without reading its weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.startswith("tiny:"):
        slm = tiny_slm(spec.split(":", 1)[1], seed=seed)
        return slm.tokenizer, slm.model
    tok = load_tokenizer(spec)
    path = cache_dir() / "models" / spec if spec in CATALOG else Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        cfg = AutoConfig.from_pretrained(path)
    elif path.suffix == ".gguf":
        cfg = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    else:
        return tok, load(spec).model
    with torch.device("meta"):
        return tok, AutoModelForCausalLM.from_config(cfg)


# ---------------------------------------------------------------- resolving

def pow2_floor(n: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(n, 1)))))


def resolve_seq(r: dict, stats: DataStats, batch: int, where: str) -> int:
    """The longest power-of-two sequence in [min, max] the splits have room for."""
    need_train, need_val = TRAIN_BATCHES * batch, VAL_BLOCKS
    fit = min(stats.tokens["train"] / need_train, stats.tokens["val"] / need_val)
    seq = min(pow2_floor(r["max"]) if r["max"] else 1 << 30, pow2_floor(fit))
    if seq < r["min"]:
        raise too_small(stats, where, r["min"] * need_train, r["min"] * need_val,
                        f"{need_train} sequences of {r['min']} tokens to train on, "
                        f"{need_val} to validate on")
    return seq


def too_small(stats: DataStats, where: str, train: int, val: int, why: str) -> SlmError:
    return SlmError(
        f"data '{stats.spec}' is too small for {where}: {stats.tokens['train']:,} training and "
        f"{stats.tokens['val']:,} held-out tokens (by the base model's tokenizer, "
        f"{stats.records['train']} and {stats.records['val']} records); it needs at least "
        f"{train:,} and {val:,} ({why})",
        "add text (a directory of files works), or lower the step's seq_len/batch_size")


def clamp_share(r: dict, total: int) -> int:
    n = int(r["share"] * total)
    n = max(n, int(r.get("min") or 0))
    return min(n, int(r["max"])) if r.get("max") is not None else n


def base_vocab(tokenizer) -> int:
    """Tokens a trimmed vocabulary keeps whatever the domain: the alphabet (bytes) and the
    special tokens, as vocabulary trimming counts them."""
    try:
        return len(select_tokens(tokenizer_json(tokenizer), Counter(), None))
    except (SlmError, KeyError, TypeError):     # a tokenizer vocabulary trimming cannot read
        return 256 + len(tokenizer.all_special_ids)


def resolve_vocab(r: dict, stats: DataStats, shape: BaseShape, tokenizer) -> tuple[int, dict]:
    """Vocabulary size from the domain's token coverage (see the module docstring)."""
    total = sum(stats.counts.values())
    if not total:
        raise SlmError(f"data '{stats.spec}' has no training tokens to size a vocabulary on",
                       "add text to the data")
    covered, k = 0, 0
    for _, n in stats.counts.most_common():
        if covered >= r["coverage"] * total:
            break
        covered += n
        k += 1
    base = base_vocab(tokenizer)
    size = min(-(-int(base + k * (1 + r["general"])) // 64) * 64, shape.vocab - 1)
    return size, {"domain_tokens_used": len(stats.counts), "domain_tokens_covering": k,
                  "base_tokens": base, "coverage": r["coverage"], "general": r["general"]}


def resolve_target(r: dict, shape: BaseShape, vocab: int) -> tuple[int, dict]:
    """A parameter count keeping the share ``decoder`` of the decoder layers."""
    before = shape.after_vocab(vocab)
    target = before - int((1 - r["decoder"]) * shape.decoder)
    return target, {"params_in": before, "decoder_params": shape.decoder,
                    "decoder_share": r["decoder"]}
