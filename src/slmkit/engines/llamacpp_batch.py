"""Continuous batching on llama.cpp: one context, one KV-cache sequence per slot.

Every decode step sends one ``llama_batch`` holding the next token of each
generating sequence and a chunk of each prompt still being read, each token
tagged with its slot's sequence id and position. The KV cache is unified (one
pool of cells shared by all sequences), so a prompt prefix cached in one slot
is copied into another with ``llama_memory_seq_cp``, which only marks the
cells as shared, instead of being read again. Sampling runs in llama.cpp, one
sampler chain per slot, built as llama-cpp-python's ``Llama.generate`` builds
it, so a seeded request samples the same tokens as ``slm generate``.
"""
from __future__ import annotations

import os

from .batching import Feed, PrefixSlots
from .llama_lib import llama_cpp
from .llamacpp import LlamaCppEngine

C = llama_cpp()          # the machine's load settings applied before any model is opened


class LlamaCppBatch(PrefixSlots):
    """``n_slots`` sequences of up to ``ctx`` tokens each in one llama.cpp context.

    Args:
        engine: the model opened on the single-stream engine (tokenizer, chat
            template, weights); the batch context shares its weights.
        n_slots: sequences decoded together.
        ctx: tokens per sequence (prompt + completion); the KV pool holds
            ``n_slots * ctx`` cells.
        n_batch: most tokens one decode call takes (prefill chunks fill it up).
        n_threads: CPU threads (default: all cores).
    """

    def __init__(self, engine: LlamaCppEngine, n_slots: int, ctx: int, n_batch: int = 512,
                 n_threads: int | None = None):
        super().__init__(n_slots)
        self.engine = engine
        self.context_length = ctx
        self.n_batch = n_batch
        model = self.engine.llm._model.model
        threads = n_threads or os.cpu_count()
        p = C.llama_context_default_params()
        p.n_ctx = n_slots * ctx
        p.n_batch = p.n_ubatch = n_batch
        p.n_seq_max = n_slots
        p.kv_unified = True
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED    # as the single-stream engine
        p.no_perf = True
        self.ctx = C.llama_init_from_model(model, p)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_slots} x {ctx} tokens")
        self.mem = C.llama_get_memory(self.ctx)
        self.batch = C.llama_batch_init(n_batch, 0, 1)
        self.samplers: list = [None] * n_slots

    # ------------------------------------------------------------ cache edits
    def _truncate(self, slot: int, n: int) -> None:
        C.llama_memory_seq_rm(self.mem, slot, n, -1)

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        C.llama_memory_seq_rm(self.mem, dst, 0, -1)
        C.llama_memory_seq_cp(self.mem, src, dst, 0, n)

    # ------------------------------------------------------------ sampling
    def set_sampler(self, slot: int, temperature: float, top_p: float, seed: int | None) -> None:
        """Slot ``slot``'s sampler chain: greedy at temperature 0, else top-p then temperature."""
        self._free_sampler(slot)
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if temperature <= 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
        else:
            for s in (C.llama_sampler_init_top_k(0), C.llama_sampler_init_typical(1.0, 1),
                      C.llama_sampler_init_top_p(top_p, 1), C.llama_sampler_init_min_p(0.0, 1),
                      C.llama_sampler_init_temp(temperature),
                      C.llama_sampler_init_dist(C.LLAMA_DEFAULT_SEED if seed is None
                                                else seed & 0xFFFFFFFF)):
                C.llama_sampler_chain_add(chain, s)
        self.samplers[slot] = chain

    def _free_sampler(self, slot: int) -> None:
        if self.samplers[slot] is not None:
            C.llama_sampler_free(self.samplers[slot])
            self.samplers[slot] = None

    def release(self, slot: int) -> None:
        self._free_sampler(slot)
        super().release(slot)

    # ------------------------------------------------------------ decoding
    def decode(self, feeds: list[Feed]) -> dict[int, int]:
        """One ``llama_decode`` over every feed; returns the token sampled for each feed that asks."""
        b = self.batch
        n = 0
        outputs: list[tuple[int, int]] = []          # (slot, batch index)
        for f in feeds:
            pos = len(self.cached[f.slot])
            last = len(f.tokens) - 1
            for i, tok in enumerate(f.tokens):
                b.token[n] = tok
                b.pos[n] = pos + i
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = f.slot
                b.logits[n] = f.sample and i == last
                n += 1
            if f.sample:
                outputs.append((f.slot, n - 1))
            self.cached[f.slot].extend(f.tokens)
        if n > self.n_batch:
            raise ValueError(f"{n} tokens in one step; the batch holds {self.n_batch}")
        b.n_tokens = n
        rc = C.llama_decode(self.ctx, b)
        if rc != 0:
            for f in feeds:                           # the step did not happen: forget it
                del self.cached[f.slot][len(self.cached[f.slot]) - len(f.tokens):]
                self._truncate(f.slot, len(self.cached[f.slot]))
            raise RuntimeError(f"llama_decode failed ({rc})")
        return {slot: int(C.llama_sampler_sample(self.samplers[slot], self.ctx, i))
                for slot, i in outputs}

    def close(self) -> None:
        if self.ctx:
            for s in range(self.n_slots):
                self._free_sampler(s)
            C.llama_batch_free(self.batch)
            C.llama_free(self.ctx)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def kv_bytes_per_token(engine: LlamaCppEngine) -> int:
    """Bytes of f16 K and V cache one token takes in every layer."""
    m = engine.llm._model.model
    head_dim = C.llama_model_n_embd(m) // max(1, C.llama_model_n_head(m))
    return 2 * 2 * C.llama_model_n_layer(m) * C.llama_model_n_head_kv(m) * head_dim


__all__ = ["LlamaCppBatch", "kv_bytes_per_token"]
