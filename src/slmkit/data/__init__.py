"""Domain data: read files or built-in corpora, split, tokenize, pack.

A *record* is a dict with one of: ``text``; ``prompt`` + ``response``;
``messages`` (chat, a list of ``{role, content}``).

Records are documents, as the user wrote them: a text file (``.txt``, ``.md``,
``.rst``, ``.html``) is one document (a directory gives one per file), a JSONL
line or a CSV/Parquet row is one, a built-in corpus has its own units (a pydoc
topic). Tokenized, every record
ends in one EOS, and nothing else puts an EOS into the stream: long documents
run across windows (perplexity) and training blocks (packing) as one text.

Train/validation split (:func:`split`), deterministic and never empty:

- with enough documents (at least ``2 / val_fraction``, 20 at the default 10%),
  whole documents are held out, chosen by a hash of their id and text;
- with fewer (one file, a handful of files), each plain-text document is cut at
  the line break nearest to ``1 - val_fraction`` of its characters: the head
  trains, the tail is validation. Each piece ends in EOS like any record: in
  either split the text stops being contiguous there (one boundary per document,
  at a line break). Prompt/response and chat records are never cut; they are held
  out whole by the hash.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import SlmError
from .corpora import CORPORA
from .readers import (SUFFIXES, TEXT_SUFFIXES, iter_jsonl, nfc_record,  # noqa: F401
                      read_file, validate_record)

FIELD_SEP = "#"


def with_text_field(spec: str | Path | None, text_field: str | None) -> str | None:
    """A data spec that reads its text from column (or JSONL key) ``text_field``:
    ``reviews.csv`` and ``body`` -> ``reviews.csv#body``. Built-in corpora and specs that
    name their own field are left alone."""
    if spec is None or not text_field or str(spec) in CORPORA or parse_spec(spec)[1]:
        return None if spec is None else str(spec)
    return f"{spec}{FIELD_SEP}{text_field}"


def parse_spec(spec: str | Path) -> tuple[str, str | None]:
    """``(corpus name or path, text field)`` of a data spec (``path#column``)."""
    s = str(spec)
    if FIELD_SEP in s and s not in CORPORA and not Path(s).expanduser().exists():
        base, field = s.rsplit(FIELD_SEP, 1)
        if field:
            return base, field
    return s, None


def data_exists(spec: str | Path) -> bool:
    """Whether a data spec names a built-in corpus or an existing path."""
    s, _ = parse_spec(spec)
    return s in CORPORA or Path(s).expanduser().exists()


def read_records(spec: str | Path, text_field: str | None = None) -> list[dict]:
    """Records from a built-in corpus name, a file, or a directory of files, NFC-normalised.

    Args:
        spec: corpus name, file or directory; ``path#column`` names the text column
            of CSV/Parquet files (the key of JSONL records).
        text_field: the same as ``#column`` (this wins).

    Raises:
        SlmError: missing path, unknown suffix, unreadable file, or no text at all.
    """
    s, field = parse_spec(spec)
    field = text_field or field
    if s in CORPORA:
        records = [nfc_record(r) for r in CORPORA[s]()]
    else:
        path = Path(s).expanduser()
        if not path.exists():
            raise SlmError(f"data '{s}' not found", f"pass a file ({', '.join(SUFFIXES)}), a "
                           f"directory of them, or a built-in corpus: {', '.join(CORPORA)}")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower()
                       in SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise SlmError(f"no data files in {path}", f"add files of a known type: "
                           f"{', '.join(SUFFIXES)}")
        records = [r for f in files for r in read_file(f, field)]
    if not any(record_text(r).strip() for r in records):
        raise SlmError(f"data '{s}' is empty", "give it some text")
    return records


def record_text(rec: dict, tokenizer=None) -> str:
    """The record as one string (chat records through the tokenizer's template)."""
    if "text" in rec:
        return rec["text"]
    if "prompt" in rec:
        return f"{rec['prompt']}\n{rec['response']}"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(rec["messages"], tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in rec["messages"])


def split(records: list[dict], val_fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """Deterministic train/validation split (see the module docstring for the rule).

    Args:
        records: documents from :func:`read_records`.
        val_fraction: share held out, in [0, 1).

    Returns:
        ``(train, val)``; ``val`` has text whenever ``val_fraction > 0`` and there is
        more than one document or a plain-text one to cut.
    """
    if not 0 <= val_fraction < 1:
        raise SlmError(f"val_fraction {val_fraction} must be in [0, 1)")
    if val_fraction == 0:
        return list(records), []
    if len(records) * val_fraction >= 2:
        return _split_documents(records, val_fraction)
    train, val, whole = [], [], []
    for r in records:
        if "text" in r and (cut := _cut_point(r["text"], 1 - val_fraction)) is not None:
            rid = r.get("id", "")
            train.append({**r, "text": r["text"][:cut], "id": rid})
            val.append({**r, "text": r["text"][cut:], "id": f"{rid}#val"})
        else:
            whole.append(r)
    tr, va = _split_documents(whole, val_fraction)
    return train + tr, val + va


def _split_documents(records: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """Whole documents to validation by a hash of id and text (order-independent)."""
    train, val = [], []
    for r in records:
        key = f"{r.get('id', '')}\x00{record_text(r)}".encode()
        h = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") / 2**64
        (val if h < val_fraction else train).append(r)
    if val_fraction > 0 and not val and len(train) > 1:
        val.append(train.pop())
    return train, val


def _cut_point(text: str, at: float) -> int | None:
    """Where to cut ``text`` near the fraction ``at`` of its characters: just after the
    nearest line break (else whitespace, else that character); None when too short."""
    target = int(len(text) * at)
    if len(text.strip()) < 2 or not 0 < target < len(text):
        return None
    for sep in ("\n", " "):
        before, after = text.rfind(sep, 0, target), text.find(sep, target)
        options = [i for i in (before, after) if i > 0]
        if options:
            i = min(options, key=lambda i: abs(i - target))
            while i < len(text) and text[i] == sep:
                i += 1
            if text[:i].strip() and text[i:].strip():
                return i
    return target if text[:target].strip() and text[target:].strip() else None


def load_split(spec: str | Path, which: str = "train", val_fraction: float = 0.1) -> list[dict]:
    """``train``, ``val`` or ``all`` records of ``spec``."""
    records = read_records(spec)
    if which == "all":
        return records
    train, val = split(records, val_fraction)
    return train if which == "train" else val


def tokenize_records(records: list[dict], tokenizer) -> list[list[int]]:
    """Token ids of each record, each ending in EOS."""
    eos = tokenizer.eos_token_id
    out = []
    for r in records:
        ids = tokenizer(record_text(r, tokenizer), add_special_tokens=False)["input_ids"]
        out.append(ids + ([eos] if eos is not None else []))
    return out


def pack(docs: list[list[int]], block_size: int, drop_last: bool = True) -> torch.Tensor:
    """Concatenate documents and cut into blocks: (N, block_size) int64.

    A document longer than a block runs on into the next one; the only boundaries
    in the stream are the documents' own EOS tokens.
    """
    flat = [t for d in docs for t in d]
    n = len(flat) // block_size
    if n == 0:
        raise SlmError(f"data has {len(flat)} tokens, fewer than one block of {block_size}",
                       "add more data or lower the sequence length")
    if not drop_last and len(flat) % block_size:
        n += 1
        flat = flat + flat[: n * block_size - len(flat)]
    return torch.tensor(flat[: n * block_size], dtype=torch.long).view(n, block_size)


def token_stream(spec: str | Path, tokenizer, which: str = "val",
                 max_tokens: int | None = None) -> list[int]:
    """All tokens of one split as one list (for perplexity)."""
    ids = [t for d in tokenize_records(load_split(spec, which), tokenizer) for t in d]
    return ids[:max_tokens] if max_tokens else ids


def blocks(spec: str | Path, tokenizer, block_size: int, which: str = "train",
           max_blocks: int | None = None) -> torch.Tensor:
    """Packed token blocks of one split: (N, block_size)."""
    out = pack(tokenize_records(load_split(spec, which), tokenizer), block_size)
    return out[:max_blocks] if max_blocks else out
