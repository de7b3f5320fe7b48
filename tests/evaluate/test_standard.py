"""Perplexity against the tools users check it with, bits per byte, and cold speed.

References written here, independently of slmkit's code:
- the Hugging Face perplexity guide's stride loop (labels -100 on the overlap);
- llama.cpp's ``perplexity`` tool (tools/perplexity/perplexity.cpp) step by step
  through llama.cpp's C API: chunks of n_ctx, BOS on the first token of a chunk when
  the vocabulary adds one, logits only for the second half, NLL of the tokens after it.
"""
import math

import numpy as np
import pytest
import torch

from slmkit.engines import open_engine
from slmkit.engines.llama_lib import llama_cpp
from slmkit.evaluate import engine_tokens, measure_speed, perplexity
from slmkit.export import ExportConfig, run_export
from slmkit.models.tiny import tiny_slm


@pytest.fixture(scope="module")
def slm():
    return tiny_slm("llama", seed=2, initializer_range=0.1)


@pytest.fixture(scope="module")
def gguf(slm, tmp_path_factory):
    path = tmp_path_factory.mktemp("std") / "tiny-f32.gguf"
    run_export(slm, path, ExportConfig(type="f32", parity_tokens=0))
    return path


@pytest.fixture(scope="module")
def ids(slm):
    return engine_tokens(open_engine(slm), "python-docs", "val", 700)


@torch.no_grad()
def hf_guide_ppl(model, input_ids: torch.Tensor, max_length: int, stride: int) -> tuple:
    """The loop of https://huggingface.co/docs/transformers/perplexity.

    Returns (ppl as published, ppl, tokens scored). The published loop weights each
    window's mean loss by its valid labels minus one (the label shift); where windows
    overlap the first label is already -100, so the exact weight is the count of
    labels after the first: both are given.
    """
    seq_len = input_ids.size(1)
    guide_sum, guide_n, nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        inp = input_ids[:, begin_loc:end_loc]
        target_ids = inp.clone()
        target_ids[:, :-trg_len] = -100
        loss = model(inp, labels=target_ids).loss.item()
        guide_sum += loss * ((target_ids != -100).sum().item() - 1)
        guide_n += (target_ids != -100).sum().item() - 1
        n = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += loss * n
        n_tokens += n
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(guide_sum / guide_n), math.exp(nll_sum / n_tokens), n_tokens


def llamacpp_tool_ppl(path, tokens: list[int], n_ctx: int) -> tuple:
    """perplexity.cpp's loop through llama.cpp's C API (one sequence per chunk)."""
    lib = llama_cpp()
    llm = lib.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                    n_threads=2, verbose=False)
    ctx, vocab = llm._ctx.ctx, lib.llama_model_get_vocab(llm._model.model)
    add_bos = lib.llama_vocab_get_add_bos(vocab)
    n_vocab, first = lib.llama_vocab_n_tokens(vocab), n_ctx // 2
    batch = lib.llama_batch_init(n_ctx, 0, 1)
    nll, count = 0.0, 0
    try:
        for i in range(len(tokens) // n_ctx):
            chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
            if add_bos:
                chunk[0] = lib.llama_vocab_bos(vocab)
            lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
            batch.n_tokens = n_ctx
            for k, tok in enumerate(chunk):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, k, 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = int(k >= first)
            assert lib.llama_decode(ctx, batch) == 0
            for k in range(first, n_ctx - 1):
                row = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, k), shape=(n_vocab,))
                m = float(row.max())
                lse = m + math.log(float(np.exp(row.astype(np.float64) - m).sum()))
                nll += lse - float(row[chunk[k + 1]])
                count += 1
    finally:
        lib.llama_batch_free(batch)
        llm.close()
    return math.exp(nll / count), count


@pytest.mark.parametrize("max_length,stride", [(128, 128), (128, 64), (100, 37)])
def test_pytorch_engine_matches_the_hf_guide(slm, ids, max_length, stride):
    published, want, n = hf_guide_ppl(slm.model, torch.tensor([ids]), max_length, stride)
    got = perplexity(open_engine(slm), ids, max_length, stride, progress=False)
    windows = math.ceil((len(ids) - max_length) / stride) + 1
    # disjoint windows: each one's first token is context only
    assert got["tokens"] == n == len(ids) - (windows if stride == max_length else 1)
    assert got["ppl"] == pytest.approx(want, rel=1e-5)
    assert got["ppl"] == pytest.approx(published, rel=2e-3)


def test_llamacpp_engine_matches_llamacpp_tool_and_hf_guide(slm, gguf, ids):
    engine = open_engine(gguf, "llama.cpp", n_ctx=128, logits_all=True)
    tool, n = llamacpp_tool_ppl(gguf, ids, 128)
    got = perplexity(engine, ids, 128, 128, progress=False, convention="llama.cpp")
    assert got["tokens"] == n == (len(ids) // 128) * 63
    assert got["ppl"] == pytest.approx(tool, rel=1e-4)
    # PyTorch on the same convention: within 1% (same weights, another kernel set)
    torch_conv = perplexity(open_engine(slm), ids, 128, 128, progress=False,
                            convention="llama.cpp")
    assert torch_conv["ppl"] == pytest.approx(tool, rel=0.01)
    # and llama.cpp on the HF guide's convention agrees with the guide's loop
    _, want, _ = hf_guide_ppl(slm.model, torch.tensor([ids]), 128, 64)
    assert perplexity(engine, ids, 128, 64, progress=False)["ppl"] == pytest.approx(want, rel=0.01)


class Uniform:
    """A fake engine: uniform logits over ``vocab`` tokens, one character per token."""

    context_length = 1024
    eos_ids = {0}

    def __init__(self, vocab=64, bos=None):
        self.vocab, self.bos, self.windows = vocab, bos, []

    def tokenize(self, text, special=True):
        return ([self.bos] if special and self.bos is not None else []) + \
            [ord(c) % 60 + 2 for c in text]

    def detokenize(self, ids):
        return "".join("é" if t == 3 else "a" for t in ids if t not in (0, self.bos))

    def logits(self, ids):
        self.windows.append(list(ids))
        return torch.zeros(len(ids), self.vocab)


def test_llamacpp_convention_chunks_bos_and_bits_per_byte():
    eng = Uniform(bos=1)
    ids = [5] * 300
    r = perplexity(eng, ids, 64, 64, progress=False, convention="llama.cpp")
    assert len(eng.windows) == 4 and all(w[0] == 1 and len(w) == 64 for w in eng.windows)
    assert r["tokens"] == 4 * 31 and r["nll"] == pytest.approx(math.log(64))
    assert r["bytes"] == 4 * 31                         # one ASCII byte per token
    assert r["bits_per_byte"] == pytest.approx(6.0)     # log2(64) bits per one-byte token
    # a 2-byte character per token halves bits per byte; EOS has no bytes
    two = perplexity(Uniform(), [3] * 100 + [0], 512, 512, progress=False)
    assert two["tokens"] == 100 and two["bytes"] == 2 * 99
    assert two["bits_per_byte"] == pytest.approx(100 * 6.0 / 198)
    with pytest.raises(Exception, match="2 x 64"):
        perplexity(eng, ids[:100], 64, 64, progress=False, convention="llama.cpp")


def test_bits_per_byte_counts_the_text(slm, ids):
    r = perplexity(open_engine(slm), ids, 128, 64, progress=False)
    text = slm.tokenizer.decode(ids, skip_special_tokens=True)
    first = slm.tokenizer.decode(ids[:1], skip_special_tokens=True)
    assert r["bytes"] == len(text.encode()) - len(first.encode())
    assert r["bits_per_byte"] == pytest.approx(r["nll"] * r["tokens"] / math.log(2) / r["bytes"])


def test_llamacpp_speed_prefills_the_whole_prompt_every_run(gguf):
    engine = open_engine(gguf, "llama.cpp", n_ctx=256)
    prompt = list(range(20, 148))
    r = measure_speed(engine, prompt, gen_tokens=8, repeats=2)
    assert r["prompt_tokens"] == r["llama_prompt_tokens"] == 128
    assert r["gen_tokens"] == 8
    # without forgetting the cache, llama-cpp-python re-evaluates one prompt token only:
    # the measurement this guards against
    engine.perf(reset=True)
    from slmkit.engines import GenStats
    for _ in engine.token_ids(prompt, 2, 0.0, 1.0, 0, GenStats(), ignore_eos=True):
        pass
    assert engine.perf()["prompt_tokens"] <= 1
    # llama.cpp's own clock for the prompt fits inside the measured time to first token
    assert r["llama_prefill_tok_s"] >= r["prefill_tok_s"]
