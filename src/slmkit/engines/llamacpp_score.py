"""Many questions' choices scored in one llama.cpp decode call.

A multiple-choice question is a token prefix (its prompt) and one suffix per
choice. Every suffix gets its own KV-cache sequence id; the prefix tokens are
tagged with the ids of all the question's suffixes, so the prefix is read once
and its cache cells are shared, and each suffix token carries only its own id,
so it attends to the prefix and to the suffix tokens before it. Questions are
packed into one ``llama_batch`` until it holds about ``n_tokens`` tokens or
``n_seq`` sequences (llama.cpp splits it into micro-batches, in order); the
cache is cleared after each call. Logits are kept only for the positions that
predict a suffix token: the last prefix token and every suffix token but the
last. On the tiny f32 test model the scores equal those of one pass per choice
(tests/engines); on SmolLM2-135M Q4_1 they do not: a question's second choice
after a shared prompt moved by up to 0.33 nats, and choices with prompts of their
own, packed into one call, by up to 1.02 nats, so scoring does not use this by
default (``score_task(batch=True)`` does).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from .llama_lib import llama_cpp

if TYPE_CHECKING:
    from .llamacpp import LlamaCppEngine

C = llama_cpp()          # the machine's load settings applied before any model is opened

Item = tuple[list[int], list[list[int]]]       # (prefix, suffixes)


class LlamaCppScorer:
    """A second context on an open engine's weights, for batched scoring.

    Args:
        engine: the model opened on the single-stream engine (weights, LoRA adapter).
        n_tokens: tokens packed into one decode call (a longer question gets a call
            of its own, up to ``n_ctx``).
        n_seq: sequences (choices) in one decode call.
        n_ubatch: tokens llama.cpp computes at a time.
        n_threads: CPU threads (default: all cores).
    """

    def __init__(self, engine: "LlamaCppEngine", n_tokens: int = 512, n_seq: int = 64,
                 n_ubatch: int = 512, n_threads: int | None = None):
        self.engine = engine
        self.n_tokens = n_tokens
        self.n_seq = n_seq
        model = engine.llm._model.model
        self.n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(model))
        self.n_ctx = max(n_tokens, 2 * engine.context_length)
        threads = n_threads or os.cpu_count()
        p = C.llama_context_default_params()
        p.n_ctx = p.n_batch = self.n_ctx
        p.n_ubatch = min(n_ubatch, self.n_ctx)
        p.n_seq_max = n_seq
        p.kv_unified = True
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED    # as the single-stream engine
        p.no_perf = True
        self.ctx = C.llama_init_from_model(model, p)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a scoring context of {self.n_ctx} "
                               "tokens")
        lora = getattr(engine.llm, "_lora_adapter", None)
        if lora is not None:
            C.llama_set_adapter_lora(self.ctx, lora, engine.llm.lora_scale)
        self.mem = C.llama_get_memory(self.ctx)
        self.batch = C.llama_batch_init(self.n_ctx, 0, n_seq)
        self.decode_calls = 0            # llama_decode calls made (bench/tasks_speed.py)
        self.tokens_read = 0             # tokens they took

    @staticmethod
    def size(item: Item) -> int:
        prefix, suffixes = item
        return len(prefix) + sum(len(s) for s in suffixes)

    def score(self, items: list[Item]) -> list[list[torch.Tensor]]:
        """Per item, per suffix: the log-probability of each suffix token (after the prefix
        and the suffix tokens before it)."""
        out: list[list[torch.Tensor] | None] = [None] * len(items)
        group: list[int] = []
        tokens = seqs = 0
        for i, item in enumerate(items):
            n, k = self.size(item), len(item[1])
            if k > self.n_seq or n > self.n_ctx:
                out[i] = self.engine.score_suffixes(*item)      # too big to share a call
                continue
            if group and (tokens + n > self.n_tokens or seqs + k > self.n_seq):
                self._run(items, group, out)
                group, tokens, seqs = [], 0, 0
            group.append(i)
            tokens, seqs = tokens + n, seqs + k
        if group:
            self._run(items, group, out)
        return out

    def _run(self, items: list[Item], group: list[int], out: list) -> None:
        """One decode call over the items ``group``; fills ``out`` at their indices."""
        b = self.batch
        n = n_out = 0
        seq = 0
        gather = []        # per item, per suffix: (output rows, target tokens)

        def put(tok: int, pos: int, seq_ids: list[int], logits: bool) -> None:
            nonlocal n, n_out
            b.token[n], b.pos[n], b.n_seq_id[n] = tok, pos, len(seq_ids)
            for j, s in enumerate(seq_ids):
                b.seq_id[n][j] = s
            b.logits[n] = logits
            n += 1
            n_out += logits

        for i in group:
            prefix, suffixes = items[i]
            p = len(prefix)
            ids = list(range(seq, seq + len(suffixes)))
            seq += len(suffixes)
            for t, tok in enumerate(prefix):
                put(tok, t, ids, t == p - 1)
            last = n_out - 1                    # the row that predicts every suffix's first token
            rows = []
            for s, suffix in zip(ids, suffixes):
                first = n_out
                for t, tok in enumerate(suffix):
                    put(tok, p + t, [s], t < len(suffix) - 1)
                rows.append(([last] + list(range(first, first + len(suffix) - 1)), suffix))
            gather.append(rows)
        b.n_tokens = n
        C.llama_memory_clear(self.mem, True)
        rc = C.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}) on a batch of {n} tokens")
        self.decode_calls += 1
        self.tokens_read += n
        logits = torch.from_numpy(np.ctypeslib.as_array(C.llama_get_logits(self.ctx),
                                                        shape=(n_out, self.n_vocab)))
        lse = torch.logsumexp(logits, dim=-1)                  # (n_out,)
        for i, rows in zip(group, gather):
            res = []
            for r, targets in rows:
                r = torch.tensor(r)
                res.append(logits[r, torch.tensor(targets)] - lse[r])
            out[i] = res

    def close(self) -> None:
        if self.ctx:
            C.llama_batch_free(self.batch)
            C.llama_free(self.ctx)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


__all__ = ["Item", "LlamaCppScorer"]
