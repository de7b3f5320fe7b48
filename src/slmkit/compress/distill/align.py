"""Cross-tokenizer alignment (after Boizard et al. 2024, "Towards Cross-Tokenizer
Distillation: the Universal Logit Distillation Loss").

Teacher and student read the same text, each through its own tokenizer. A student
position is paired with the teacher position whose token ends at the same character:
both have then read the same text and predict what follows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...data import record_text
from ...errors import SlmError


@dataclass
class CrossBlocks:
    """The teacher's view of the student's blocks, for cross-tokenizer distillation.

    ``teacher_ids`` (N, Tt): the teacher's tokens of the same text (right-padded);
    ``align`` (N, T): for each student position, the teacher position whose token
    ends at the same character, or -1.
    """

    teacher_ids: torch.Tensor
    align: torch.Tensor

    @property
    def aligned_fraction(self) -> float:
        return float((self.align >= 0).float().mean())

    def columns(self) -> dict[str, torch.Tensor]:
        """The teacher's tokens and alignment as batch columns ``t_input_ids``, ``t_align``."""
        return {"t_input_ids": self.teacher_ids, "t_align": self.align}

    def select(self, keep: torch.Tensor) -> "CrossBlocks":
        """The rows ``keep`` (indices into N)."""
        return CrossBlocks(self.teacher_ids[keep], self.align[keep])


def _ids_and_ends(text: str, tokenizer) -> tuple[list[int], list[int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [e for _, e in enc["offset_mapping"]]


def _check_fast(s_tok, t_tok) -> None:
    for name, tok in (("student", s_tok), ("teacher", t_tok)):
        if not getattr(tok, "is_fast", False):
            raise SlmError(f"the {name}'s tokenizer cannot report character offsets",
                           "cross-tokenizer distillation needs fast (Rust) tokenizers")


def _tokens_and_ends(records: list[dict], s_tok, t_tok) -> tuple[list, list, list, list]:
    """Both tokenizations of the records' text, each token with the character it ends at
    (records joined by one separator character, an EOS token where the tokenizer has one)."""
    s_ids, s_end, t_ids, t_end, base = [], [], [], [], 0
    for r in records:
        text = record_text(r, s_tok)
        for tok, ids, ends in ((s_tok, s_ids, s_end), (t_tok, t_ids, t_end)):
            i, e = _ids_and_ends(text, tok)
            ids += i + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
            ends += [base + x for x in e] + ([base + len(text) + 1]
                                              if tok.eos_token_id is not None else [])
        base += len(text) + 1
    return s_ids, s_end, t_ids, t_end


def cross_blocks(records: list[dict], s_tok, t_tok, seq_len: int
                 ) -> tuple[torch.Tensor, CrossBlocks]:
    """Student blocks (N, T) packed as :func:`slmkit.data.blocks` does, and the teacher's
    tokens and alignment for each (see :class:`CrossBlocks`)."""
    _check_fast(s_tok, t_tok)
    s_ids, s_end, t_ids, t_end = _tokens_and_ends(records, s_tok, t_tok)
    n = len(s_ids) // seq_len
    if n == 0:
        raise SlmError(f"data has {len(s_ids)} tokens, fewer than one block of {seq_len}",
                       "add more data or lower the sequence length")
    t_pos = {e: j for j, e in enumerate(t_end)}          # last teacher token ending there
    t_blocks, aligns = [], []
    j0 = 0
    for b in range(n):
        lo, hi = b * seq_len, (b + 1) * seq_len
        c_lo = s_end[lo - 1] if lo else 0                  # text before this block
        while j0 < len(t_end) and t_end[j0] <= c_lo:
            j0 += 1
        j1 = j0
        while j1 < len(t_end) and t_end[j1] <= s_end[hi - 1]:
            j1 += 1
        t_blocks.append(t_ids[j0:j1])
        aligns.append([t_pos[e] - j0 if j0 <= t_pos.get(e, -1) < j1 else -1
                       for e in s_end[lo:hi]])
    width = max(1, max(len(t) for t in t_blocks))
    pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else (t_tok.eos_token_id or 0)
    teacher_ids = torch.full((n, width), pad, dtype=torch.long)
    for b, t in enumerate(t_blocks):
        teacher_ids[b, :len(t)] = torch.tensor(t, dtype=torch.long)
    blocks = torch.tensor(s_ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return blocks, CrossBlocks(teacher_ids, torch.tensor(aligns, dtype=torch.long))
