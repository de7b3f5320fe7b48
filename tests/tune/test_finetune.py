"""Fine-tuning: adapters at init and after merge, QLoRA storage, loss masking, packing,
wrong-base adapters, and an end-to-end run of a tiny model."""
import json

import pytest
import torch
import torch.nn.functional as F

from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_slm
from slmkit.tune import adapters
from slmkit.tune.finetune import FinetuneConfig, run_finetune, sft_loss
from slmkit.data.sft import IGNORE, encode_record, pack_examples

X = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))


def _logits(model, x=X):
    with torch.no_grad():
        return model(input_ids=x).logits


def _randomize_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "magnitude" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_adapter_at_init_leaves_logits_unchanged(method):
    slm = tiny_slm("llama")
    ref = _logits(slm.model)
    if method == "qlora":        # reference: the 4-bit base without adapters
        adapters.quantize_base(slm.model, adapters.linear_names(slm.model))
        ref = _logits(slm.model)
        adapters.dequantize_base(slm.model)
    model = adapters.setup_model(slm.model, method, rank=4).eval()
    assert torch.allclose(_logits(model), ref, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_merged_adapter_equals_base_plus_adapter(method):
    model = adapters.setup_model(tiny_slm("llama").model, method, rank=4).eval()
    _randomize_lora(model)
    with_adapter = _logits(model)
    merged = adapters.merge(model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert all(isinstance(m, torch.nn.Linear) for m in adapters.linear_layers(
        adapters.decoder_layers(merged)[0]).values())
    assert torch.allclose(_logits(merged), with_adapter, atol=1e-4)


def test_qlora_base_is_frozen_and_4bit():
    slm = tiny_slm("llama")
    w0 = slm.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    model = adapters.setup_model(slm.model, "qlora", rank=4)
    layer = model.base_model.model.model.layers[0]
    q = layer.mlp.down_proj.base_layer
    assert isinstance(q, adapters.QuantLinear4)
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (64, 64)   # 128 cols / 2
    err = (q.weight_dq() - w0).norm() / w0.norm()
    assert 0 < err < 0.12
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    codes = {n: b.clone() for n, b in model.named_buffers() if n.endswith("qweight")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = sft_loss(model, {"input_ids": X})
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(b, codes[n]) for n, b in model.named_buffers() if n in codes)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("fmt,bound", [("nf4", 0.12), ("int4", 0.15)])
def test_4bit_roundtrip(fmt, bound):
    w = torch.randn(32, 128)
    codes, scales = adapters.quantize_4bit(w, fmt, 64)
    back = adapters.dequantize_4bit(codes, scales, adapters.CODEBOOKS[fmt]())
    assert (back - w).norm() / w.norm() < bound
    levels = adapters.nf4_codebook()
    assert len(levels) == 16 and levels[0] == -1 and levels[-1] == 1 and (levels == 0).any()


def test_unknown_target_module():
    model = tiny_slm("llama").model
    with pytest.raises(SlmError, match="qkv_proj.*choose from: down_proj"):
        adapters.setup_model(model, "lora", targets=["q_proj", "qkv_proj"])
    model = adapters.setup_model(model, "lora", targets=["q_proj", "v_proj"])
    wrapped = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters()
               if "lora_A" in n}
    assert wrapped == {"q_proj", "v_proj"}


def test_prompt_tokens_carry_no_loss():
    slm = tiny_slm("llama")
    tok = slm.tokenizer
    ex = encode_record({"prompt": "What does len do?", "response": "It counts items."}, tok)
    labelled = tok.decode([i for i, lab in zip(ex.ids, ex.labels) if lab != IGNORE])
    assert labelled == "It counts items.<|im_end|>\n"
    ids = torch.tensor([ex.ids])
    labels = torch.tensor([ex.labels])
    loss, m = sft_loss(slm.model, {"input_ids": ids, "labels": labels})
    logits = _logits(slm.model, ids)[0, :-1]                    # predicts tokens 1..T-1
    target = labels[0, 1:]
    keep = target != IGNORE
    manual = F.cross_entropy(logits[keep], target[keep])
    assert m["loss_tokens"] == int(keep.sum()) < len(ex.ids) - 10
    assert torch.allclose(loss, manual, atol=1e-5)
    # changing the prompt changes its tokens, but their labels stay -100
    ex2 = encode_record({"prompt": "Something else entirely?", "response": "It counts items."}, tok)
    assert ex2.n_loss == ex.n_loss


def test_chat_loss_only_on_assistant_turns():
    tok = tiny_slm("llama").tokenizer
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ok bye"}]
    ex = encode_record({"messages": msgs}, tok)
    assert tok.decode([i for i, lab in zip(ex.ids, ex.labels) if lab != IGNORE]) == \
        "hello there<|im_end|>\nok bye<|im_end|>\n"


def test_packed_examples_do_not_see_each_other():
    slm = tiny_slm("llama")
    tok = slm.tokenizer
    a = encode_record({"prompt": "First question here?", "response": "First answer."}, tok)
    b = encode_record({"prompt": "Second one?", "response": "Second answer, longer."}, tok)
    packed = pack_examples([a, b], len(a.ids) + len(b.ids) + 3, tok.pad_token_id)
    assert len(packed) == 1
    batch = packed.batch(slice(0, 1))
    with torch.no_grad():
        # no cache: transformers then reads restarting position ids as packed sequences
        together = slm.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                             use_cache=False).logits[0]
        first = max(a, b, key=lambda e: len(e.ids))              # bin packing puts longest first
        second = b if first is a else a
        alone = slm.model(input_ids=torch.tensor([second.ids])).logits[0]
    start = len(first.ids)
    assert torch.allclose(together[start:start + len(second.ids)], alone, atol=1e-4)


def test_adapter_for_other_base_is_refused(tmp_path):
    model = adapters.setup_model(tiny_slm("llama", seed=0).model, "lora", rank=4)
    fp = adapters.base_fingerprint(model)
    adapters.save_adapter(model, tmp_path / "ad", "tiny-a", fp, "lora")
    other = tiny_slm("llama", seed=1).model
    with pytest.raises(SlmError, match="different base model"):
        adapters.apply_adapter(other, tmp_path / "ad")
    with pytest.raises(SlmError, match="not an adapter directory"):
        adapters.apply_adapter(other, tmp_path)


def _text_data(tmp_path):
    from slmkit.data.corpora import python_docs
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in python_docs()[:60]))
    return path


def test_end_to_end_lora_writes_adapter_model_report(tmp_path):
    import slmkit
    slm = tiny_slm("llama")
    base_dir = slmkit.save(slm, tmp_path / "base")
    cfg = FinetuneConfig(data=str(_text_data(tmp_path)), method="lora", rank=8, lr=3e-3,
                         seq_len=64, batch_size=4, max_tokens=64 * 4 * 40, merge=True,
                         max_val_blocks=8, patience=0)
    out = tmp_path / "ft"
    rep = run_finetune(str(base_dir), out, cfg, progress=False)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "model.safetensors").exists() and (out / "slmkit.json").exists()
    assert not (tmp_path / "ft.partial").exists()
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["steps"] == rep["steps"] == 40 and len(on_disk["loss_curve"]) == 40
    assert rep["val_loss_after"] < rep["val_loss_before"] - 0.05
    assert rep["val_ppl_after"] < rep["val_ppl_before"]
    assert rep["tokens_per_s"] > 0 and rep["peak_rss_bytes"] > 0 and rep["adapter_bytes"] > 0
    assert 0 < rep["trainable_params"] < rep["params"]
    # the merged model equals base + saved adapter
    merged = slmkit.load(out).model
    base = slmkit.load(base_dir).model
    adapted = adapters.apply_adapter(base, out / "adapter").eval()
    assert torch.allclose(_logits(merged), _logits(adapted), atol=1e-4)
    assert json.loads((out / "slmkit.json").read_text())["history"][-1]["step"] == "finetune"


def test_end_to_end_full_and_early_stop(tmp_path):
    cfg = FinetuneConfig(data=str(_text_data(tmp_path)), method="full", lr=3e-2, seq_len=64,
                         batch_size=4, max_tokens=64 * 4 * 24, eval_every=3, patience=1,
                         warmup_steps=0, max_val_blocks=4)
    rep = run_finetune(tiny_slm("llama"), tmp_path / "full", cfg, progress=False)
    assert (tmp_path / "full" / "model.safetensors").exists()
    assert not (tmp_path / "full" / "adapter").exists()
    best = min(r["val_loss"] for r in rep["eval_curve"])
    assert rep["val_loss_after"] == best < rep["val_loss_before"]


def test_bad_inputs(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "only a prompt"}\n')
    with pytest.raises(SlmError, match="bad.jsonl:2"):
        run_finetune(tiny_slm("llama"), tmp_path / "o", FinetuneConfig(data=str(bad)),
                     progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError):
        FinetuneConfig(data="python-docs", method="prefix")


def test_loop_stops_when_eval_asks(tmp_path):
    from slmkit.data.batches import Batches
    from slmkit.tune.loop import TrainConfig, train
    slm = tiny_slm("llama")
    model = adapters.setup_model(slm.model, "lora", rank=4)
    ex = encode_record({"text": "def f(x):\n    return x + 1\n" * 20}, slm.tokenizer)
    batches = Batches(pack_examples([ex] * 8, 32).columns(), 2)
    calls = []

    def eval_fn():
        calls.append(1)
        return {"val_loss": 1.0, "stop": float(len(calls) >= 3)}   # start, step 2, step 4

    rep = train(model, batches, sft_loss, TrainConfig(max_steps=20, eval_every=2, warmup_steps=0),
                tmp_path, eval_fn=eval_fn, progress=False)
    assert rep.steps == 4 and [r["step"] for r in rep.eval_curve] == [0, 2, 4]
