"""Training examples for fine-tuning: token ids plus labels, packed into blocks.

Three record kinds (see ``slmkit.data``):

- ``text``: causal LM on every token;
- ``prompt`` / ``response``: loss only on the response (the prompt's labels are -100);
- ``messages``: loss only on the assistant turns, rendered with the tokenizer's
  chat template (the end-of-turn marker after each assistant turn is trained
  too, so the model learns to stop).

Packing: examples are laid end to end into blocks of ``seq_len`` tokens with
``position_ids`` restarting at 0 for each example. transformers reads restarting
position ids (with no attention mask) as packed sequences and builds a
block-diagonal causal mask, so an example never attends to its neighbours:
packing is safe for every record kind and wastes no compute on padding.
Plain text may be cut across blocks (each piece is a contiguous document
fragment); prompt/response and chat examples are kept whole (first-fit
decreasing into blocks) and truncated only when longer than one block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SlmError

IGNORE = -100


@dataclass
class Example:
    """One tokenized record: ``ids`` and ``labels`` (-100 where no loss) of equal length."""

    ids: list[int]
    labels: list[int]

    @property
    def n_loss(self) -> int:
        return sum(lab != IGNORE for lab in self.labels)


def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages: list[dict], gen_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=gen_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of each assistant turn.

    A span runs from the end of the rendered prefix with the generation prompt
    (where the assistant's content starts) to the end of the rendered prefix
    including that turn (so the end-of-turn marker is inside it).
    """
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], gen_prompt=True))
        end = len(_render(tokenizer, messages[: i + 1]))
        if not full.startswith(_render(tokenizer, messages[: i + 1])):
            # template is not prefix-stable: find the content itself after the prompt
            start = full.find(m["content"], start)
            end = start + len(m["content"]) if start >= 0 else -1
        if start < 0 or end <= start:
            raise SlmError("cannot locate an assistant turn in the chat template output",
                           "use prompt/response records or a tokenizer with a standard template")
        spans.append((start, end))
    return full, spans


def _masked(tokenizer, text: str, spans: list[tuple[int, int]], eos: bool) -> Example:
    """Tokenize ``text``; labels are the ids of tokens starting inside ``spans``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = [i if any(s <= a < e for s, e in spans) else IGNORE
              for i, (a, _) in zip(ids, offsets)]
    if eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return Example(ids, labels)


def encode_record(rec: dict, tokenizer) -> Example:
    """Token ids and loss labels of one record (text, prompt/response or messages).

    Args:
        rec: a validated data record.
        tokenizer: an HF fast tokenizer (chat template used when it has one).
    """
    if "text" in rec:
        ids = tokenizer(rec["text"], add_special_tokens=False)["input_ids"]
        ids = list(ids) + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        return Example(ids, list(ids))
    if "prompt" in rec:
        if _has_template(tokenizer):
            msgs = [{"role": "user", "content": rec["prompt"]},
                    {"role": "assistant", "content": rec["response"]}]
            return _masked(tokenizer, *assistant_spans(tokenizer, msgs), eos=False)
        text = f"{rec['prompt']}\n{rec['response']}"
        return _masked(tokenizer, text, [(len(rec["prompt"]) + 1, len(text))], eos=True)
    if not _has_template(tokenizer):
        raise SlmError("chat records ('messages') need a tokenizer with a chat template",
                       "use a model whose tokenizer has one, or prompt/response records")
    return _masked(tokenizer, *assistant_spans(tokenizer, rec["messages"]), eos=False)


def encode_records(records: list[dict], tokenizer) -> list[Example]:
    """``encode_record`` over records, dropping those with no loss tokens."""
    return [e for e in (encode_record(r, tokenizer) for r in records) if e.n_loss > 0]


# ---------------------------------------------------------------- packing

@dataclass
class Packed:
    """Blocks of packed examples, all (N, seq_len) int64."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def n_loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def columns(self) -> dict[str, torch.Tensor]:
        """The blocks as the columns of :class:`slmkit.data.batches.Batches`."""
        return {"input_ids": self.input_ids, "labels": self.labels,
                "position_ids": self.position_ids}

    def batch(self, rows) -> dict:
        return {k: v[rows] for k, v in self.columns().items()}


def _to_tensors(rows: list[tuple[list[int], list[int], list[int]]], seq_len: int,
                pad_id: int) -> Packed:
    n = len(rows)
    ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    pos = torch.zeros((n, seq_len), dtype=torch.long)
    for r, (i, lab, p) in enumerate(rows):
        ids[r, : len(i)] = torch.tensor(i)
        labels[r, : len(lab)] = torch.tensor(lab)
        pos[r, : len(p)] = torch.tensor(p)
        # padding continues the last sequence's positions (no loss, attends only backwards)
        if len(p) < seq_len:
            start = (p[-1] + 1) if p else 0
            pos[r, len(p):] = torch.arange(start, start + seq_len - len(p))
    # the first token of each packed example is never a target: it cannot see the
    # previous example, so predicting it from there would be noise
    labels[pos == 0] = IGNORE
    return Packed(ids, labels, pos)


def _stream_pack(examples: list[Example], seq_len: int, pad_id: int) -> Packed:
    """Concatenate all examples and cut into blocks; positions restart per example."""
    ids, labels, pos = [], [], []
    for e in examples:
        ids += e.ids
        labels += e.labels
        pos += range(len(e.ids))
    n = len(ids) // seq_len
    if n == 0:
        raise SlmError(f"data has {len(ids)} tokens, fewer than one block of {seq_len}",
                       "add more data or lower seq_len")
    rows = []
    for b in range(n):
        s = slice(b * seq_len, (b + 1) * seq_len)
        rows.append((ids[s], labels[s], _restart_positions(pos[s])))
    return _to_tensors(rows, seq_len, pad_id)


def _restart_positions(p: list[int]) -> list[int]:
    """Make a block's positions start at 0 for the fragment it begins with."""
    if not p or p[0] == 0:
        return list(p)
    out, shift = [], p[0]
    for i, x in enumerate(p):
        if x == 0 and i:
            shift = 0
        out.append(x - shift)
    return out


def _bin_pack(examples: list[Example], seq_len: int, pad_id: int) -> Packed:
    """First-fit decreasing: whole examples per block (longer ones truncated)."""
    bins: list[list[Example]] = []
    space: list[int] = []
    for e in sorted(examples, key=lambda e: -len(e.ids)):
        e = Example(e.ids[:seq_len], e.labels[:seq_len])
        for b, free in enumerate(space):
            if len(e.ids) <= free:
                bins[b].append(e)
                space[b] -= len(e.ids)
                break
        else:
            bins.append([e])
            space.append(seq_len - len(e.ids))
    rows = [([t for e in b for t in e.ids], [t for e in b for t in e.labels],
             [t for e in b for t in range(len(e.ids))]) for b in bins]
    return _to_tensors(rows, seq_len, pad_id)


def pack_examples(examples: list[Example], seq_len: int, pad_id: int = 0,
                  whole: bool | None = None) -> Packed:
    """Pack examples into (N, seq_len) blocks with per-example position ids.

    Args:
        examples: encoded records.
        seq_len: tokens per block.
        pad_id: id for padding (only in ``whole`` mode, where blocks may not be full).
        whole: keep examples whole (bin packing); default: only when some tokens
            carry no loss (prompt/response or chat data), plain text is streamed.
    """
    if not examples:
        raise SlmError("no training examples with loss tokens", "check the data")
    if whole is None:
        whole = any(e.n_loss < len(e.ids) for e in examples)
    return _bin_pack(examples, seq_len, pad_id) if whole else _stream_pack(examples, seq_len,
                                                                            pad_id)
