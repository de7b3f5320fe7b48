"""Distillation: KD losses, frozen teacher, cache round trip, bad input."""
import copy
import hashlib
import json

import pytest
import torch

from slmkit.compress.distill import (DistillConfig, DistillModule, Teacher, default_layer_pairs,
                                     init_student, kd_divergence, make_loss_fn, run_distill)
from slmkit.errors import SlmError
from slmkit.models.io import load, save
from slmkit.models.tiny import tiny_slm


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")     # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    save(tiny_slm("llama", seed=0), root / "teacher")
    save(tiny_slm("llama", seed=1, num_hidden_layers=1), root / "student")
    text = "\n\n".join(f"Section {i}. The function returns a list of {i % 7} values and raises "
                       f"ValueError when the argument {i % 5} is empty." for i in range(120))
    (root / "data.txt").write_text(text)
    return root


def _cfg(files, **kw):
    base = dict(teacher=str(files / "teacher"), data=str(files / "data.txt"), tokens=2048,
                seq_len=32, batch_size=4, lr=3e-3, warmup_steps=2, ckpt_every=0, val_tokens=512,
                bf16=False)
    base.update(kw)
    return DistillConfig(**base)


def _files_hash(path):
    h = hashlib.sha256()
    for p in sorted(path.glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_kd_zero_iff_equal(kind):
    z = torch.randn(6, 50) * 3
    assert kd_divergence(z, z.clone(), kind, 2.0).abs().max() < 1e-5
    vals, idx = z.topk(50, dim=-1)                 # top-k = vocab: same as full
    assert kd_divergence(z, (vals, idx), kind, 2.0).abs().max() < 1e-5
    other = torch.randn(6, 50) * 3
    assert (kd_divergence(other, z, kind) > 1e-3).all()
    assert torch.allclose(kd_divergence(other, z, kind),
                          kd_divergence(other, z.topk(50, -1), kind), atol=1e-5)


def test_kd_matches_definitions():
    p_logits, q_logits = torch.randn(4, 9), torch.randn(4, 9)
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    fkl = (p * (p / q).log()).sum(-1)
    rkl = (q * (q / p).log()).sum(-1)
    m = 0.3 * p + 0.7 * q
    jsd = 0.3 * (p * (p / m).log()).sum(-1) + 0.7 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(kd_divergence(q_logits, p_logits, "forward_kl"), fkl)
    torch.testing.assert_close(kd_divergence(q_logits, p_logits, "reverse_kl"), rkl)
    torch.testing.assert_close(kd_divergence(q_logits, p_logits, "jsd", beta=0.3), jsd)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_distill_loss_zero_for_identical_student(files, kind):
    teacher = tiny_slm("llama", seed=0).model
    student = copy.deepcopy(teacher)
    cfg = _cfg(files, kd=kind, temperature=2.0, w_ce=0.0, w_hidden=1.0, top_k=None)
    module = DistillModule(student, default_layer_pairs(2, 2), 64, 64)
    loss, metrics = make_loss_fn(cfg, Teacher(teacher))(
        module, {"input_ids": torch.randint(3, 500, (2, 16))})
    assert metrics["kd"] < 1e-6 and metrics["hidden"] < 1e-10
    assert loss.item() < 1e-5
    assert metrics["ce"] > 1.0                      # the data term is not trivially zero


def test_gradients_only_in_student(files):
    teacher = tiny_slm("llama", seed=0).model
    student = tiny_slm("llama", seed=1, num_hidden_layers=1, hidden_size=32, head_dim=8,
                       intermediate_size=64).model
    cfg = _cfg(files, w_ce=0.5, w_hidden=1.0)
    module = DistillModule(student, default_layer_pairs(1, 2), 32, 64)
    t = Teacher(teacher)
    loss, _ = make_loss_fn(cfg, t)(module, {"input_ids": torch.randint(3, 500, (2, 16))})
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert module.proj[0].weight.grad.abs().sum() > 0      # 32 -> 64 projection learns
    assert module.pairs == [(0, 1)]


# ---------------------------------------------------------------- runs

def test_run_distill_end_to_end(files, tmp_path):
    before = _files_hash(files / "teacher")
    rep = run_distill(str(files / "student"), tmp_path / "out",
                      _cfg(files, w_ce=0.5, w_hidden=0.5, eval_every=8), progress=False)
    assert _files_hash(files / "teacher") == before
    assert rep["teacher_unchanged"] is True
    assert rep["teacher_sha256_before"] == rep["teacher_sha256_after"]
    assert rep["val_ppl"] < rep["val_ppl_before"]
    assert rep["tokens"] == rep["steps"] * 4 * 32 >= 2048
    assert rep["params"] < rep["teacher_params"]
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["val_ppl"] == rep["val_ppl"]
    assert load(tmp_path / "out").meta["history"][-1]["step"] == "distill"
    assert not (tmp_path / "out.partial").exists()
    with pytest.raises(SlmError, match="already exists"):
        run_distill(str(files / "student"), tmp_path / "out", _cfg(files), progress=False)


def test_cache_round_trip_equals_live_teacher(files, tmp_path):
    """With top-k = vocabulary the cached run follows the live run's loss curve."""
    live = run_distill(str(files / "student"), tmp_path / "live",
                       _cfg(files, top_k=512, w_ce=0.3), progress=False)
    cfg = _cfg(files, top_k=512, w_ce=0.3, teacher_cache=str(tmp_path / "cache"))
    built = run_distill(str(files / "student"), tmp_path / "c1", cfg, progress=False)
    again = run_distill(str(files / "student"), tmp_path / "c2", cfg, progress=False)
    assert built["cache_built"] and "cache_built" not in again
    assert again["teacher_params"] is None          # the teacher was not loaded
    man = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert man["top_k"] == 512 and man["n_blocks"] == 64
    for rep in (built, again):
        got = [r["loss"] for r in rep["loss_curve"]]
        assert got == pytest.approx([r["loss"] for r in live["loss_curve"]], rel=2e-3)
    assert [r["loss"] for r in built["loss_curve"]] == [r["loss"] for r in again["loss_curve"]]


def test_cache_from_another_teacher_is_refused(files, tmp_path):
    cfg = _cfg(files, teacher_cache=str(tmp_path / "cache"), top_k=8, tokens=512)
    run_distill(str(files / "student"), tmp_path / "a", cfg, progress=False)
    save(tiny_slm("llama", seed=5), tmp_path / "other")
    bad = cfg.model_copy(update={"teacher": str(tmp_path / "other")})
    with pytest.raises(SlmError, match="another teacher"):
        run_distill(str(files / "student"), tmp_path / "b", bad, progress=False)
    with pytest.raises(SlmError, match="top-8"):
        run_distill(str(files / "student"), tmp_path / "c",
                    cfg.model_copy(update={"top_k": 16}), progress=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_teacher_fingerprint_sees_a_change_anywhere(files, tmp_path):
    from slmkit.compress.distill import teacher_files_fingerprint
    import shutil
    copy = tmp_path / "teacher"
    shutil.copytree(files / "teacher", copy)
    before = teacher_files_fingerprint(str(copy))
    w = next(copy.glob("*.safetensors"))
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 1                      # one bit in the middle of the weights
    w.write_bytes(bytes(data))
    assert teacher_files_fingerprint(str(copy)) != before


def test_larger_student_warns_when_training_from_the_cache(files, tmp_path):
    cfg = _cfg(files, teacher_cache=str(tmp_path / "cache"), top_k=8, tokens=256)
    run_distill(str(files / "student"), tmp_path / "a", cfg, progress=False)
    big = tiny_slm("llama", seed=1, num_hidden_layers=3)
    with pytest.warns(UserWarning, match="larger than the teacher"):
        rep = run_distill(big, tmp_path / "b", cfg, progress=False)
    assert rep["teacher_params"] is None                # the teacher was not loaded


# ---------------------------------------------------------------- bad input

def test_different_tokenizer_is_refused(files, tmp_path):
    s = tiny_slm("llama", seed=1)
    s.tokenizer.add_tokens(["<extra_token>"])
    with pytest.raises(SlmError, match="different tokenizers") as err:
        run_distill(s, tmp_path / "out", _cfg(files), progress=False)
    assert "--cross-tokenizer" in err.value.fix
    with pytest.raises(ValueError, match="live teacher"):
        _cfg(files, cross_tokenizer=True, teacher_cache=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="w_hidden"):
        _cfg(files, cross_tokenizer=True, w_hidden=1.0)


def test_larger_student_warns(files, tmp_path):
    big = tiny_slm("llama", seed=1, num_hidden_layers=3)
    with pytest.warns(UserWarning, match="larger than the teacher"):
        run_distill(big, tmp_path / "out", _cfg(files, tokens=128), progress=False)


def test_empty_data_and_bad_fields(files, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(SlmError, match="empty"):
        run_distill(str(files / "student"), tmp_path / "out",
                    _cfg(files, data=str(tmp_path / "empty.txt")), progress=False)
    with pytest.raises(ValueError, match="temperature"):
        _cfg(files, temperature=0)
    with pytest.raises(ValueError, match="w_kld"):
        _cfg(files, w_kld=1.0)
    with pytest.raises(ValueError, match="loss weights"):       # refused by the config itself
        _cfg(files, w_kl=0, w_ce=0)


def test_init_student_from_config(files):
    s = init_student(str(files / "teacher"), {"model_type": "llama", "hidden_size": 32,
                     "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "head_dim": 16}, num_hidden_layers=1)
    assert s.model.config.vocab_size == 512 and s.model.config.num_hidden_layers == 1
    assert s.tokenizer.get_vocab() == load(files / "teacher").tokenizer.get_vocab()


def test_default_layer_pairs():
    assert default_layer_pairs(2, 4) == [(0, 1), (1, 3)]
    assert default_layer_pairs(15, 30)[:2] == [(0, 1), (1, 3)]
    assert default_layer_pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]


def test_interrupted_run_resumes_to_same_curve(files, tmp_path, monkeypatch):
    import slmkit.compress.distill.run as d
    cfg = _cfg(files, tokens=1024, ckpt_every=3, w_ce=0.2)
    full = run_distill(str(files / "student"), tmp_path / "full", cfg, progress=False)
    real = d.make_loss_fn

    def crashing(*a):
        fn, calls = real(*a), {"n": 0}

        def wrapped(m, b):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
            return fn(m, b)
        return wrapped

    monkeypatch.setattr(d, "make_loss_fn", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_distill(str(files / "student"), tmp_path / "out", cfg, progress=False)
    assert (tmp_path / "out.partial" / "checkpoints" / "step-0000003").is_dir()
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(d, "make_loss_fn", real)
    rep = run_distill(str(files / "student"), tmp_path / "out", cfg, progress=False)
    assert rep["resumed_from"] == 3
    assert [r["loss"] for r in rep["loss_curve"]] == [r["loss"] for r in full["loss_curve"]]


# ---------------------------------------------------------------- cross-tokenizer

def _other_student(seed=1):
    """A tiny student with its own, smaller tokenizer (384 tokens against the teacher's 512)."""
    from transformers import AutoModelForCausalLM

    from slmkit.models.io import SLM
    from slmkit.models.tiny import tiny_config, tiny_tokenizer
    tok = tiny_tokenizer(384)
    cfg = tiny_config("llama", vocab_size=len(tok), num_hidden_layers=1,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return SLM(AutoModelForCausalLM.from_config(cfg), tok, "tiny-384", {"history": []})


def test_sorted_prob_distance_ignores_token_names():
    from slmkit.compress.distill import sorted_prob_distance
    torch.manual_seed(0)
    z = torch.randn(6, 40)
    perm = torch.randperm(40)
    assert torch.allclose(sorted_prob_distance(z[:, perm], z, k=8), torch.zeros(6), atol=1e-6)
    wider = torch.cat([z, torch.full((6, 10), -1e4)], 1)        # a bigger vocabulary, unused
    assert torch.allclose(sorted_prob_distance(wider, z, k=64), torch.zeros(6), atol=1e-6)
    s = torch.randn(6, 30, requires_grad=True)
    d = sorted_prob_distance(s, z, k=8)
    assert (d > 0.01).all() and (d <= 2 + 1e-6).all()
    d.sum().backward()
    assert s.grad.abs().sum() > 0


def test_cross_blocks_align_positions_that_end_on_the_same_character():
    from slmkit.compress.distill import cross_blocks
    from slmkit.models.tiny import tiny_tokenizer
    s_tok, t_tok = tiny_tokenizer(384), tiny_tokenizer()
    recs = [{"text": f"def f{i}(x):\n    return sorted(x, key=len)[:{i}]  # list"}
            for i in range(40)]
    blocks, cross = cross_blocks(recs, s_tok, t_tok, 24)
    assert blocks.shape[1] == 24 and cross.align.shape == blocks.shape
    assert 0.5 < cross.aligned_fraction < 1.0          # different tokenizers: not everywhere
    checked = 0
    for b in range(len(blocks)):
        for i, j in enumerate(cross.align[b].tolist()):
            if j < 0 or int(blocks[b, i]) == s_tok.eos_token_id:
                continue
            s_text = s_tok.decode(blocks[b, :i + 1])
            t_text = t_tok.decode(cross.teacher_ids[b, :j + 1])
            tail = s_tok.decode(blocks[b, i:i + 1])
            assert t_text.endswith(tail) and (s_text in t_text or t_text in s_text)
            checked += 1
    assert checked > 100
    same_blocks, same = cross_blocks(recs, t_tok, t_tok, 24)
    assert torch.equal(same.align, torch.arange(24).expand_as(same.align))
    assert torch.equal(same.teacher_ids[:, :24], same_blocks)


def test_cross_tokenizer_kd_is_zero_for_the_same_model_and_tokenizer(files):
    from slmkit.compress.distill import cross_blocks, distill_batches
    from slmkit.data import load_split
    t = load(str(files / "teacher"))
    blocks, cross = cross_blocks(load_split(str(files / "data.txt"), "train"), t.tokenizer,
                                 t.tokenizer, 32)
    batch = distill_batches(blocks, 4, cross=cross)[0]
    module = DistillModule(copy.deepcopy(t.model), [], 64, 64)
    cfg = _cfg(files, cross_tokenizer=True)
    loss, m = make_loss_fn(cfg, Teacher(t.model))(module, batch)
    assert m["kd"] == pytest.approx(0.0, abs=1e-6) and m["ce"] > 0


def test_cross_tokenizer_distillation_trains_a_student_with_its_own_vocabulary(files, tmp_path):
    before = _files_hash(files / "teacher")
    rep = run_distill(_other_student(), tmp_path / "out",
                      _cfg(files, cross_tokenizer=True, tokens=4096, w_ce=0.0), progress=False)
    assert rep["cross_tokenizer"]["aligned_fraction"] > 0.5
    assert rep["cross_tokenizer"]["student_vocab"] != rep["cross_tokenizer"]["teacher_vocab"]
    assert rep["loss"]["kd"] == "sorted_prob_l1" and rep["teacher_unchanged"]
    kd = [row["kd"] for row in rep["loss_curve"]]
    assert all(0 < k <= 2 for k in kd) and kd[-1] < 0.8 * kd[0]     # the student moves to it
    assert _files_hash(files / "teacher") == before
    out = load(str(tmp_path / "out"))
    assert len(out.tokenizer) == 384
