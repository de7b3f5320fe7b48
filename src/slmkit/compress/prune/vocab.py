"""Vocabulary trimming: keep the tokens a domain uses and drop the other embedding rows.

In a small model the token embedding is a large share of the parameters
(SmolLM2-135M: 28.3M of 134.5M for 49,152 tokens), yet one domain's text uses a
few thousand of those tokens. Trimming keeps

- every base token (the byte alphabet: any text stays encodable) and every added
  (special) token,
- the tokens that occur at least ``min_count`` times in the domain data, most
  frequent first,
- then, up to ``vocab_size`` in all, the most general remaining tokens (lowest
  merge rank first),
- each with the tokens it is merged from, so every kept token stays reachable.

The tokenizer keeps exactly the merges whose parts and result are all kept,
in their original order. Text the tokenizer used to encode with a dropped token
is now encoded with its smaller pieces, so token counts change: compare models
across tokenizers per original token (``slm eval --reference``), not per own token.

Works for byte-level BPE tokenizers (GPT-2 style: SmolLM2, Qwen2, Llama 3) and for
SentencePiece-style BPE with byte fallback (Gemma, Llama 2, Mistral). In the latter the
"alphabet" that keeps every text encodable is the 256 byte tokens ``<0x00>``..``<0xFF>``
(a character outside the vocabulary is written as its UTF-8 bytes), so single characters
are kept only when the domain (or the budget of general tokens) uses them, and the
placeholder tokens ``<unusedN>`` are dropped with the other tokens nothing uses. Tokens
that are runs of spaces are always kept: llama.cpp matches them whole before merging.
"""
from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ...errors import SlmError
from .rebuild import copy_config, rebuild

_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
                  "decoder_start_token_id", "sep_token_id", "cls_token_id")


def tokenizer_json(tok) -> dict:
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise SlmError(f"tokenizer {type(tok).__name__} has no fast (tokenizers) backend",
                       "vocabulary trimming needs a tokenizer.json-based tokenizer")
    tj = json.loads(backend.to_str())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise SlmError(f"vocabulary trimming supports BPE tokenizers (byte-level, or with byte "
                       f"fallback); this one is {model.get('type')}",
                       "use --method width or depth for this model")
    return tj


BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
PLACEHOLDER = re.compile(r"<unused\d+>")


def _base_tokens(tj: dict, parents: dict[int, list[int]]) -> list[int]:
    """Tokens every text needs: the alphabet (bytes) and the special tokens."""
    vocab: dict[str, int] = tj["model"]["vocab"]
    added = [t for t in tj.get("added_tokens", []) if not PLACEHOLDER.fullmatch(t["content"])]
    if tj["model"].get("byte_fallback"):
        alphabet = [i for t, i in vocab.items() if BYTE_TOKEN.fullmatch(t)]
        if len(alphabet) < 256:
            raise SlmError(f"the byte-fallback tokenizer has {len(alphabet)} of the 256 byte "
                           "tokens", "trim a tokenizer that has <0x00>..<0xFF>")
        unk = tj["model"].get("unk_token")
        alphabet += [vocab[unk]] if unk in vocab else []
        # runs of spaces: llama.cpp matches them whole before merging (Gemma's GGUF marks
        # them user-defined), so the two tokenizers agree only while all of them stay
        alphabet += [i for t, i in vocab.items() if len(t) > 1 and not t.strip("\u2581")]
    else:
        alphabet = sorted(set(vocab.values()) - set(parents))
    return sorted(alphabet) + sorted(t["id"] for t in added)


def _merge_pairs(tj: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
            for m in tj["model"]["merges"]]


def token_counts(tok, texts) -> Counter:
    """How often each token id occurs in ``texts`` (special tokens not added)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(tok(text, add_special_tokens=False)["input_ids"])
    return counts


def _parents(tj: dict) -> dict[int, list[int]]:
    """Merged token id -> the ids it is merged from."""
    vocab: dict[str, int] = tj["model"]["vocab"]
    parents: dict[int, list[int]] = {}
    for a, b in _merge_pairs(tj):
        if a in vocab and b in vocab and a + b in vocab:
            parents.setdefault(vocab[a + b], []).extend((vocab[a], vocab[b]))
    return parents


def base_tokens(tj: dict) -> set[int]:
    """Tokens every trimmed vocabulary keeps (the alphabet, the special tokens) with the
    tokens they are merged from: the least ``vocab_size`` can be."""
    parents = _parents(tj)
    keep: set[int] = set()
    stack = list(_base_tokens(tj, parents))
    while stack:
        t = stack.pop()
        if t not in keep:
            keep.add(t)
            stack.extend(parents.get(t, ()))
    return keep


def select_tokens(tj: dict, counts: Counter, vocab_size: int | None = None,
                  min_count: int = 1) -> list[int]:
    """Sorted ids of the tokens to keep (see the module docstring for the rule).

    With ``vocab_size`` the result has at most that many tokens: after the base and
    special tokens, domain tokens go in by frequency, then general ones by merge rank,
    each together with the tokens it is merged from, while they fit.
    """
    vocab: dict[str, int] = tj["model"]["vocab"]
    parents = _parents(tj)
    byte_fallback = bool(tj["model"].get("byte_fallback"))
    keep: set[int] = set()
    budget = vocab_size if vocab_size is not None else float("inf")

    def closure(i: int) -> set[int]:
        need, stack = set(), [i]
        while stack:
            t = stack.pop()
            if t not in keep and t not in need:
                need.add(t)
                stack.extend(parents.get(t, ()))
        return need

    for i in _base_tokens(tj, parents):
        keep |= closure(i)
    if len(keep) > budget:
        raise SlmError(f"vocab_size {vocab_size} is below the {len(keep)} base and special "
                       "tokens every text needs", f"give at least {len(keep)}")
    # byte-level: tokens not made by a merge are the alphabet, already kept; byte fallback:
    # any token the text uses (single characters too), by frequency
    added = {t["id"] for t in tj.get("added_tokens", [])}
    ordinary = set(vocab.values()) - added if byte_fallback else set(parents)
    domain = sorted((i for i, n in counts.items() if n >= min_count and i in ordinary),
                    key=lambda i: (-counts[i], i))
    general = sorted(ordinary) if vocab_size is not None else []
    for i in domain + general:               # frequent domain tokens, then by merge rank
        if len(keep) >= budget:
            break
        need = closure(i)
        if len(keep) + len(need) <= budget:
            keep |= need
    return sorted(keep)


def _remap_ids(node, new_id: dict[int, int]):
    """Token ids inside a post-processor (TemplateProcessing, RobertaProcessing) remapped."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ids" and isinstance(v, list):
                out[k] = [new_id[i] for i in v]
            elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2:
                out[k] = [v[0], new_id[v[1]]]
            else:
                out[k] = _remap_ids(v, new_id)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, new_id) for v in node]
    return node


def trim_tokenizer(tok, keep: list[int]):
    """A new HF tokenizer with only the tokens ``keep`` (old ids), renumbered in order."""
    from transformers import AutoTokenizer
    tj = tokenizer_json(tok)
    new_id = {old: new for new, old in enumerate(keep)}
    vocab = tj["model"]["vocab"]
    kept = {t: new_id[i] for t, i in vocab.items() if i in new_id}
    tj["model"]["vocab"] = kept
    tj["model"]["merges"] = [m for m, (a, b) in zip(tj["model"]["merges"], _merge_pairs(tj))
                             if a in kept and b in kept and a + b in kept]
    tj["added_tokens"] = [dict(t, id=new_id[t["id"]]) for t in tj.get("added_tokens", [])
                          if t["id"] in new_id]
    if tj.get("post_processor"):
        tj["post_processor"] = _remap_ids(tj["post_processor"], new_id)
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        (Path(d) / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
        for extra in ("vocab.json", "merges.txt", "tokenizer.model"):  # slow files, now stale
            (Path(d) / extra).unlink(missing_ok=True)
        _trim_config(Path(d) / "tokenizer_config.json", {t["content"] for t in tj["added_tokens"]},
                     new_id)
        return AutoTokenizer.from_pretrained(d)


def _trim_config(path: Path, kept: set[str], new_id: dict[int, int]) -> None:
    """Drop removed added tokens from ``tokenizer_config.json`` (it would add them back)."""
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    if "added_tokens_decoder" in cfg:
        cfg["added_tokens_decoder"] = {str(new_id[int(i)]): t for i, t in
                                       cfg["added_tokens_decoder"].items()
                                       if int(i) in new_id and t.get("content") in kept}
    for key in ("additional_special_tokens", "extra_special_tokens"):
        v = cfg.get(key)
        if isinstance(v, list):
            cfg[key] = [t for t in v if (t if isinstance(t, str) else t.get("content")) in kept]
    path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2))


def _embedding_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the input embedding and the output head (weight and bias)."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    keys = []
    for name, mod in model.named_modules():
        if mod is inp or (out is not None and mod is out):
            keys += [f"{name}.{p}" for p, _ in mod.named_parameters(recurse=False)]
    return keys


def _map_id(value, new_id: dict[int, int]):
    if isinstance(value, list):
        mapped = [new_id[v] for v in value if v in new_id]
        return mapped or None
    return new_id.get(value) if value is not None else None


def trim_model(model: nn.Module, keep: list[int]) -> nn.Module:
    """A new model whose embedding (and untied head) hold only the rows ``keep``."""
    rows = torch.tensor(keep)
    state = dict(model.state_dict())
    for k in _embedding_keys(model):
        if k in state and state[k].shape[0] == model.config.vocab_size:
            state[k] = state[k].index_select(0, rows).clone()
    new_id = {old: new for new, old in enumerate(keep)}
    changes = {"vocab_size": len(keep)}
    for k in _TOKEN_ID_KEYS:
        if getattr(model.config, k, None) is not None:
            changes[k] = _map_id(getattr(model.config, k), new_id)
    new = rebuild(model, copy_config(model, **changes), state)
    gen = new.generation_config
    for k in _TOKEN_ID_KEYS:
        if getattr(gen, k, None) is not None:
            setattr(gen, k, _map_id(getattr(gen, k), new_id))
    return new


def prune(model: nn.Module, tok, texts, *, vocab_size: int | None = None,
          min_count: int = 1):
    """Trim ``model`` and ``tok`` to the tokens ``texts`` use.

    Args:
        model: an HF CausalLM (left unchanged).
        tok: its fast tokenizer.
        texts: domain text (the calibration data's train split).
        vocab_size: tokens to keep at most: base and special tokens, then domain tokens
            by frequency, then the most general ones. ``None``: every domain token.
        min_count: occurrences a token needs in ``texts`` to count as a domain token.

    Returns:
        (model, tokenizer, info) with the kept old ids in ``info["kept_ids"]`` and the
        tokens counted in ``info["calib_tokens"]``.
    """
    tj = tokenizer_json(tok)
    n_vocab = model.config.vocab_size
    if vocab_size is not None and vocab_size >= n_vocab:
        raise SlmError(f"vocab_size {vocab_size} is not smaller than the model's vocabulary "
                       f"({n_vocab})", "give a smaller vocab_size")
    counts = token_counts(tok, texts)
    if not counts:
        raise SlmError("the calibration data has no text to count tokens in",
                       "give --calib a corpus or file with text")
    keep = [i for i in select_tokens(tj, counts, vocab_size, min_count) if i < n_vocab]
    new_tok = trim_tokenizer(tok, keep)
    new = trim_model(model, keep)
    domain = sum(1 for n in counts.values() if n >= min_count)
    kept = set(keep)
    covered = sum(n for i, n in counts.items() if i in kept)
    total = sum(counts.values())
    return new, new_tok, {
        "vocab_size": [n_vocab, len(keep)], "domain_tokens": domain, "calib_tokens": total,
        "domain_token_coverage": covered / total,
        "merges": [len(tj["model"]["merges"]), len(tokenizer_json(new_tok)["model"]["merges"])],
        "kept_ids": keep,
    }
