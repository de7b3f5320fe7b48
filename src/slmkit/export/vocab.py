"""Tokenizer -> GGUF metadata.

Two kinds of BPE tokenizers, as llama.cpp knows them:

* byte-level BPE (GPT-2 style: SmolLM2, Qwen2, Llama 3) -> llama.cpp's ``gpt2``
  model: tokens, merges and the pre-tokenizer's name;
* SentencePiece-style BPE with byte fallback (Gemma, Llama 2, Mistral) ->
  llama.cpp's ``llama`` model: tokens with scores and types, no merges. llama.cpp
  merges adjacent pieces into the vocabulary token with the highest score first;
  characters outside the vocabulary become the byte tokens ``<0x00>``..``<0xFF>``.
  Where the model came from a GGUF file, each token keeps that file's score and
  type (found by its text, so a trimmed vocabulary keeps them too); otherwise the
  score is minus the rank of the first merge that makes the token, which is the
  order the HF tokenizer applies its merges in.
"""
from __future__ import annotations

import json
import re

import gguf

from ..errors import SlmError
from ..models.gguf_meta import read_header

# (substring of tokenizer.json's pre_tokenizer, llama.cpp pre-tokenizer name), first match wins
_PRE_PATTERNS = (
    ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
     "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "qwen2"),
    ("\\p{N}{1,3}", "llama-bpe"),
    ('"Digits", "individual_digits": true', "smollm"),
)


def pre_tokenizer_name(tok, source_gguf: str | None = None) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer regex.

    A model first read from a GGUF file keeps that file's name; otherwise it is
    recognised from ``tokenizer.json`` (plain ByteLevel is GPT-2's regex, "gpt-2").
    """
    if source_gguf:
        try:
            pre = read_header(source_gguf).metadata.get(gguf.Keys.Tokenizer.PRE)
            if isinstance(pre, str):
                return pre
        except (OSError, ValueError, EOFError):
            pass
    pre = json.dumps(_tokenizer_json(tok).get("pre_tokenizer"))
    for pat, name in _PRE_PATTERNS:
        if pat in pre or json.dumps(pat)[1:-1] in pre:
            return name
    return "gpt-2"


def _tokenizer_json(tok) -> dict:
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise SlmError(f"tokenizer {type(tok).__name__} has no fast (tokenizers) backend",
                       "export needs a tokenizer.json-based tokenizer")
    return json.loads(backend.to_str())


def add_tokenizer(w: gguf.GGUFWriter, tok, vocab_size: int, source_gguf: str | None = None) -> dict:
    """Write tokens, types, merges, special ids and chat template to ``w``.

    Args:
        w: the writer.
        tok: the HF (fast) tokenizer.
        vocab_size: rows of the embedding matrix; ids past the tokenizer are padding.
        source_gguf: GGUF file the model was first read from, if any.

    Returns:
        what was written, for the report.
    """
    copied = copy_source_tokenizer(w, tok, vocab_size, source_gguf)
    if copied:
        return copied
    tj = _tokenizer_json(tok)
    model = tj["model"]
    if model.get("type") != "BPE":
        raise SlmError(f"tokenizer type {model.get('type')} is not supported by the GGUF "
                       "exporter", "export models with a BPE tokenizer (byte-level, or "
                       "SentencePiece-style with byte fallback)")
    vocab = tok.get_vocab()
    if len(vocab) > vocab_size:
        raise SlmError(f"tokenizer has {len(vocab)} tokens but the model only {vocab_size} rows",
                       "resize the model's embeddings to the tokenizer")
    if model.get("byte_fallback"):
        return _add_sentencepiece(w, tok, tj, vocab_size, source_gguf)
    added = {t["content"]: t.get("special", False) for t in tj.get("added_tokens", [])}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = (gguf.TokenType.CONTROL if added.get(text) else
                    gguf.TokenType.USER_DEFINED if text in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = pre_tokenizer_name(tok, source_gguf)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    _add_special(w, tok)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    return {"model": "gpt2", "pre": pre, "tokens": len(vocab), "merges": len(merges)}


def _add_sentencepiece(w: gguf.GGUFWriter, tok, tj: dict, vocab_size: int,
                       source_gguf: str | None) -> dict:
    """Tokens, scores and types for llama.cpp's ``llama`` (SentencePiece BPE) model."""
    vocab = tok.get_vocab()
    added = {t["content"]: t.get("special", False) for t in tj.get("added_tokens", [])}
    source = _source_entries(source_gguf)
    rank = {} if source else _merge_ranks(tj)
    T = gguf.TokenType
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-1000.0] * vocab_size
    types = [T.UNUSED] * vocab_size
    from_source = 0
    for text, i in vocab.items():
        if text in source:
            tokens[i], scores[i], types[i] = source[text]
            from_source += 1
            continue
        tokens[i] = text
        if BYTE_TOKEN.fullmatch(text):
            types[i], scores[i] = T.BYTE, 0.0
        elif text in added:
            types[i] = T.CONTROL if added[text] else T.USER_DEFINED
        elif i == tok.unk_token_id:
            types[i] = T.UNKNOWN
        else:
            types[i], scores[i] = T.NORMAL, -float(rank.get(text, 0))
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
        raise SlmError(f"the byte-fallback tokenizer lacks byte tokens ({', '.join(missing[:3])}"
                       f"{', ...' if len(missing) > 3 else ''})",
                       "keep <0x00>..<0xFF> in the vocabulary")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(_prepends_space(tj))
    _add_special(w, tok)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    return {"model": "llama", "pre": "default", "tokens": len(vocab),
            "scores_from": source_gguf if source else "merge ranks",
            "tokens_from_source": from_source}


BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def _source_entries(source_gguf: str | None) -> dict[str, tuple[str, float, int]]:
    """``{HF token text: (GGUF text, score, type)}`` from a SentencePiece-style GGUF file.

    transformers spells tokens made only of spaces with U+2581 (a GGUF file from
    Gemma stores real spaces); both spellings find the file's entry.
    """
    if not source_gguf:
        return {}
    try:
        r = gguf.GGUFReader(source_gguf)
    except (OSError, ValueError):
        return {}
    f = r.fields
    if (gguf.Keys.Tokenizer.SCORES not in f or gguf.Keys.Tokenizer.MODEL not in f
            or f[gguf.Keys.Tokenizer.MODEL].contents() != "llama"):
        return {}
    toks = f[gguf.Keys.Tokenizer.LIST].contents()
    scores = f[gguf.Keys.Tokenizer.SCORES].contents()
    types = f[gguf.Keys.Tokenizer.TOKEN_TYPE].contents()
    out = {}
    for t, s, ty in zip(toks, scores, types):
        key = "\u2581" * len(t) if " " in t and not t.strip() else t
        out[key] = (t, float(s), int(ty))
    return out


def _merge_ranks(tj: dict) -> dict[str, int]:
    """``{token: rank of the first merge that makes it}`` (1-based)."""
    rank: dict[str, int] = {}
    for r, m in enumerate(tj["model"].get("merges", []), 1):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    return rank


def _prepends_space(tj: dict) -> bool:
    """Whether the tokenizer puts U+2581 before the text (Llama 2) or not (Gemma)."""
    text = json.dumps([tj.get("normalizer"), tj.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "always"' in text \
        or '"prepend_scheme": "first"' in text


def _add_special(w: gguf.GGUFWriter, tok) -> None:
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "unk": tok.unk_token_id,
           "pad": tok.pad_token_id}
    for kind, i in ids.items():
        if i is not None:
            getattr(w, f"add_{kind}_token_id")(int(i))
    probe = tok("a", add_special_tokens=True)["input_ids"]
    w.add_add_bos_token(bool(probe) and tok.bos_token_id is not None
                        and probe[0] == tok.bos_token_id)
    w.add_add_eos_token(bool(probe) and tok.eos_token_id is not None and len(probe) > 1
                        and probe[-1] == tok.eos_token_id)


def copy_source_tokenizer(w: gguf.GGUFWriter, tok, vocab_size: int,
                          source_gguf: str | None) -> dict | None:
    """Copy ``tokenizer.*`` from the GGUF the model was first read from, if still valid.

    A model that came from a GGUF file (the built-ins) keeps that file's exact
    tokenizer (SentencePiece scores for Gemma, llama.cpp's pre-tokenizer name),
    provided its token list still matches the HF tokenizer id for id.
    """
    if not source_gguf:
        return None
    try:
        r = gguf.GGUFReader(source_gguf)
    except (OSError, ValueError):
        return None
    f = r.fields.get(gguf.Keys.Tokenizer.LIST)
    if f is None:
        return None
    tokens = f.contents()
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    if len(tokens) != vocab_size or any(by_id.get(i, t) != t for i, t in enumerate(tokens)):
        return None
    own_template = getattr(tok, "chat_template", None)
    for key, field in r.fields.items():
        if not key.startswith("tokenizer.") or (own_template and key == "tokenizer.chat_template"):
            continue
        vt = field.types[0]
        sub = field.types[1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vt, sub)
    if own_template:
        w.add_chat_template(own_template)
    model = r.fields[gguf.Keys.Tokenizer.MODEL].contents()
    pre = r.fields.get(gguf.Keys.Tokenizer.PRE)
    return {"model": model, "pre": pre.contents() if pre else None, "tokens": len(tokens),
            "copied_from": source_gguf}
