"""Vocabulary trimming: kept tokens, tokenizer consistency, same logits, export, eval scale."""
import json
import math

import pytest
import torch

import slmkit
from slmkit.compress.prune import PruneConfig, run_prune
from slmkit.compress.prune import vocab
from slmkit.data import load_split, record_text
from slmkit.engines import open_engine
from slmkit.errors import SlmError
from slmkit.evaluate import eval_text, text_perplexity
from slmkit.models.tiny import tiny_slm

SAMPLE = 'def f(x):\n    """Return x."""\n    return [i for i in range(10)]  # ünïcode, 3.14'


@pytest.fixture(scope="module")
def texts():
    # the opening 1,500 characters of 30 topics: a domain that leaves tokens unused
    return [record_text(r)[:1500] for r in load_split("python-docs", "train")][:30]


@pytest.fixture(scope="module")
def trimmed(texts):
    slm = tiny_slm("llama", seed=3)
    model, tok, info = vocab.prune(slm.model, slm.tokenizer, texts, vocab_size=400)
    return slm, model, tok, info


def test_budget_alphabet_and_specials_kept(trimmed):
    slm, model, tok, info = trimmed
    keep = info["kept_ids"]
    assert len(keep) == 400 == model.config.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.shape[0] == 400
    old = slm.tokenizer.get_vocab()
    by_id = {i: t for t, i in old.items()}
    kept_text = {by_id[i] for i in keep}
    from tokenizers.pre_tokenizers import ByteLevel
    assert set(ByteLevel.alphabet()) <= kept_text                       # any text encodable
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert special in tok.get_vocab()
    assert tok.convert_ids_to_tokens(model.config.eos_token_id) == \
        slm.tokenizer.convert_ids_to_tokens(slm.model.config.eos_token_id)
    # every kept merge result is reachable: its parts are kept too
    tj = json.loads(tok.backend_tokenizer.to_str())
    kv = tj["model"]["vocab"]
    for m in tj["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        assert a in kv and b in kv and a + b in kv


def test_tokenizer_round_trips_and_only_splits(trimmed):
    slm, _, tok, info = trimmed
    old_ids = slm.tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    new_ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    assert tok.decode(new_ids) == SAMPLE
    assert len(new_ids) >= len(old_ids)
    # where the old tokens were all kept, the new tokenization is the same, renumbered
    keep = info["kept_ids"]
    new_of = {o: n for n, o in enumerate(keep)}
    kept_words = [w for w in ("def", "return", "for", "range") if
                  all(i in new_of for i in slm.tokenizer(w, add_special_tokens=False)["input_ids"])]
    assert kept_words
    for w in kept_words:
        assert tok(w, add_special_tokens=False)["input_ids"] == \
            [new_of[i] for i in slm.tokenizer(w, add_special_tokens=False)["input_ids"]]


def test_trimmed_logits_are_the_kept_columns(trimmed):
    slm, model, _, info = trimmed
    keep = torch.tensor(info["kept_ids"])
    new_ids = torch.arange(5, 120)[None]
    with torch.no_grad():
        full = slm.model(keep[new_ids], use_cache=False).logits[..., keep]
        small = model(new_ids, use_cache=False).logits
    torch.testing.assert_close(small, full, rtol=1e-5, atol=1e-5)


def test_untied_head_is_sliced_too(texts):
    slm = tiny_slm("qwen2", tie_word_embeddings=False)
    model, _, info = vocab.prune(slm.model, slm.tokenizer, texts, vocab_size=350)
    keep = torch.tensor(info["kept_ids"])
    torch.testing.assert_close(model.get_output_embeddings().weight,
                               slm.model.get_output_embeddings().weight[keep])
    assert model.get_output_embeddings().weight.data_ptr() != \
        model.get_input_embeddings().weight.data_ptr()


def test_domain_tokens_first_then_general(texts):
    slm = tiny_slm("llama")
    tj = vocab.tokenizer_json(slm.tokenizer)
    counts = vocab.token_counts(slm.tokenizer, texts)
    domain_only = vocab.select_tokens(tj, counts)
    assert set(i for i, n in counts.items()) <= set(domain_only)
    unused = [i for i in range(len(slm.tokenizer)) if i not in counts]
    small = vocab.select_tokens(tj, counts, vocab_size=len(domain_only) + 5)
    assert set(domain_only) < set(small) and len(small) == len(domain_only) + 5
    assert set(small) - set(domain_only) <= set(unused)
    with pytest.raises(SlmError, match="vocab_size 10 is below"):
        vocab.select_tokens(tj, counts, vocab_size=10)


def test_reference_perplexity_same_scale(trimmed):
    """Per reference token, a model scored with its own tokenizer equals plain perplexity,
    and the trimmed model's figure is on the same characters."""
    slm, model, tok, _ = trimmed
    ref = eval_text(slm.tokenizer, "python-docs", "val", 300)
    assert 290 <= ref.ref_tokens <= 300
    base = open_engine(slm)
    r = text_perplexity(base, ref, 128, 64, progress=False)
    assert math.isclose(r["ppl"], r["ppl_own_tokens"], rel_tol=1e-9)
    assert r["tokens"] == ref.ref_tokens - 1
    small = open_engine(slmkit.SLM(model, tok, "trimmed"))
    s = text_perplexity(small, ref, 128, 64, progress=False)
    assert s["tokens"] > r["tokens"]                # dropped tokens come back as pieces
    # same total log-likelihood scale: per-character cost, not per own token
    nll_sum = math.log(s["ppl_own_tokens"]) * s["tokens"]
    assert math.isclose(math.log(s["ppl"]) * s["ref_tokens"], nll_sum, rel_tol=1e-9)


def test_run_prune_vocab_writes_loadable_model_that_exports(tmp_path):
    out = tmp_path / "v"
    rep = run_prune(tiny_slm("llama", initializer_range=0.3), out,
                    PruneConfig(method="vocab", vocab_size=420, eval_tokens=256))
    assert rep["params_after"] < rep["params_before"]
    assert rep["structure"]["vocab_size"] == [512, 420]
    assert rep["ppl_before"] and rep["ppl_after"] and rep["ppl_per"].startswith("token of")
    assert len(json.loads((out / "kept_ids.json").read_text())) == 420
    back = slmkit.load(out)
    assert back.model.config.vocab_size == len(back.tokenizer) == 420
    from slmkit.export import ExportConfig, run_export
    erep = run_export(back, tmp_path / "v.gguf", ExportConfig(type="f16", parity_tokens=48))
    assert erep["parity"]["argmax_agreement"] >= 0.99, erep["parity"]
    assert erep["parity"]["tokenizer_match"]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(method="vocab", target=0.5), "vocab takes vocab_size"),
    (dict(method="vocab", vocab_size=1), "at least 2"),
    (dict(method="vocab", min_count=0), "at least 1"),
])
def test_bad_vocab_config(kwargs, needle):
    with pytest.raises(Exception, match=needle):
        PruneConfig(**kwargs)


def test_vocab_size_not_smaller_writes_nothing(tmp_path):
    with pytest.raises(SlmError, match="not smaller than the model's vocabulary"):
        run_prune(tiny_slm("llama"), tmp_path / "v", PruneConfig(method="vocab", vocab_size=512,
                                                                  eval_tokens=0))
    assert not any(tmp_path.iterdir())


def test_distill_from_untrimmed_teacher_names_the_fix(trimmed):
    from slmkit.compress.distill import check_tokenizers
    slm, _, tok, _ = trimmed
    with pytest.raises(SlmError, match="trimmed copy of the teacher's.*prune --method vocab"):
        check_tokenizers(slm.tokenizer, tok)
    check_tokenizers(tok, tok)


# ------------------------------------------------ SentencePiece-style BPE with byte fallback

KO = ["리브레오피스 도움말: 표 계산 문서에서 셀을 선택합니다.", "대한민국은 민주공화국이다. 😀 中文",
      "def f(x):\n    return x  # ünïcode", "  two  spaces\tand\n\n\nlines "]


def test_byte_fallback_trim_keeps_bytes_and_matches_llamacpp(texts, tmp_path):
    from slmkit.export import ExportConfig, run_export
    from slmkit.engines.llamacpp import LlamaCppEngine
    slm = tiny_slm("gemma3_text", seed=2, initializer_range=0.3)
    assert json.loads(slm.tokenizer.backend_tokenizer.to_str())["model"]["byte_fallback"]
    model, tok, info = vocab.prune(slm.model, slm.tokenizer, texts, vocab_size=300)
    assert len(tok) == 300 == model.config.vocab_size
    kept = tok.get_vocab()
    assert all(f"<0x{b:02X}>" in kept for b in range(256))              # any text encodable
    for special in ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"):
        assert special in kept
    assert info["domain_tokens"] > 0 and info["vocab_size"] == [512, 300]
    for s in KO:                                         # Hangul goes through the byte tokens
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s
    trimmed = slmkit.SLM(model, tok, "trimmed", {"history": []})
    rep = run_export(trimmed, tmp_path / "t.gguf", ExportConfig(type="f16", parity_tokens=48))
    assert rep["tokenizer"]["model"] == "llama"
    assert rep["parity"]["tokenizer_match"] and rep["parity"]["argmax_agreement"] >= 0.99
    eng = LlamaCppEngine(tmp_path / "t.gguf", n_ctx=256)
    for s in KO + texts[:5]:
        assert eng.llm.tokenize(s.encode(), add_bos=True, special=True) == tok(s)["input_ids"]


def test_byte_fallback_vocab_below_the_bytes_is_refused():
    slm = tiny_slm("gemma3_text")
    with pytest.raises(SlmError, match="below the 2.. base and special"):
        vocab.prune(slm.model, slm.tokenizer, ["some text"], vocab_size=100)


@pytest.mark.real
def test_gemma3_trimmed_to_korean_tokenizes_like_llamacpp(tmp_path):
    """Gemma 3 270M trimmed to a Korean text's tokens: llama.cpp reads the same ids."""
    from slmkit.export.gguf_file import write_gguf
    from slmkit.engines.llamacpp import LlamaCppEngine
    slm = slmkit.load("gemma3-270m")
    law = [record_text(r) for r in load_split("python-docs", "train")][:20] + KO * 5
    model, tok, info = vocab.prune(slm.model, slm.tokenizer, law, vocab_size=4096)
    assert info["vocab_size"] == [262144, 4096]
    trimmed = slmkit.SLM(model, tok, slm.spec, slm.meta, slm.path)
    info = write_gguf(trimmed, tmp_path / "k.gguf", "f16", slm.meta["gguf"])
    assert info["tokenizer"]["tokens_from_source"] == 4096       # scores and types kept
    eng = LlamaCppEngine(tmp_path / "k.gguf", n_ctx=256)
    for s in KO + ["    return x\n\n\n", "<start_of_turn>user\n안녕<end_of_turn>\n"]:
        assert eng.llm.tokenize(s.encode(), add_bos=True, special=True) == tok(s)["input_ids"], s
