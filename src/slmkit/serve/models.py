"""Several adapters on one base model, each served under its own model id.

``slm serve BASE --adapter name=DIR --adapter name2=DIR2`` answers to the base's
id and to each adapter's name; the request's ``model`` field picks one, and
``/v1/models`` lists them all. The base weights are held once:

* llama.cpp (a ``.gguf`` base with LoRA ``.gguf`` adapters from
  ``slm export --format gguf-lora``): one llama.cpp context per model id on the
  shared weights, the adapter set on its context (``llama_set_adapters_lora``).
* PyTorch (adapter directories): one PEFT model holding every adapter; each
  model id's batch runs it with ``adapter_names`` naming its adapter for every
  row (``__base__`` for the base). PEFT switches adapters with forward hooks,
  so the forwards of different ids take turns under one lock.

Each model id has its own slots and scheduler; when the slot count is left to
the server, the memory-sized count is shared out among the ids.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from ..errors import SlmError
from .scheduler import Scheduler

BASE_ADAPTER = "__base__"          # PEFT's name for "no adapter" in a mixed batch


class Served:
    """One model id of the server: its batched engine and scheduler (config, metrics and
    drain flag are the server's)."""

    def __init__(self, parent, model_id: str, slots):
        self.parent, self.model_id = parent, model_id
        self.engine = slots.engine                   # tokenizer and chat template
        self.ctx = int(slots.context_length)
        self.vocab = _vocab_size(self.engine)
        self.scheduler = Scheduler(slots, parent.cfg.max_queue,
                                   on_first_token=parent._first_token,
                                   step_tokens=parent.cfg.step_tokens)

    def __getattr__(self, name):
        return getattr(self.parent, name)


def _vocab_size(engine) -> int:
    llm = getattr(engine, "llm", None)
    if llm is not None:
        return int(llm.n_vocab())
    return int(engine.model.get_input_embeddings().weight.shape[0])


def parse_adapters(values: list[str] | None) -> tuple[str | None, dict[str, str]]:
    """``--adapter`` values -> (one unnamed adapter, or None; {name: path}).

    ``--adapter DIR`` alone applies DIR to the model (served under the model's id);
    ``--adapter name=DIR`` (repeatable) serves DIR as ``name`` beside the base.
    """
    values = list(values or [])
    named: dict[str, str] = {}
    plain = []
    for v in values:
        name, eq, path = v.partition("=")
        if eq and name and "/" not in name and path:
            if name in named:
                raise SlmError(f"--adapter names '{name}' twice", "give each adapter its own name")
            named[name] = path
        else:
            plain.append(v)
    if plain and (named or len(plain) > 1):
        raise SlmError(f"--adapter {plain[0]} has no name, and more than one adapter is given",
                       "name each one: --adapter NAME=DIR (repeatable)")
    return (plain[0] if plain else None), named


def check_names(base_id: str, named: dict[str, str]) -> None:
    if base_id in named:
        raise SlmError(f"--adapter name '{base_id}' is the base model's id",
                       "choose another NAME in --adapter NAME=DIR (or --name for the base)")
    for name, path in named.items():
        if not Path(path).expanduser().exists():
            raise SlmError(f"--adapter {name}={path}: no such file or directory",
                           "pass an adapter directory or a LoRA .gguf that exists")


def open_model_slots(cfg, open_slots, size_slots) -> dict:
    """``{model_id: batched engine}`` for ``cfg`` (the base first, then each adapter)."""
    base_id = cfg.model_id()
    if not cfg.adapters:
        return {base_id: open_slots(cfg)}
    check_names(base_id, cfg.adapters)
    kinds = {str(p).endswith(".gguf") for p in cfg.adapters.values()}
    if len(kinds) > 1:
        raise SlmError("--adapter mixes LoRA .gguf files and adapter directories",
                       "serve a .gguf base with .gguf adapters, or a model with adapter "
                       "directories")
    if kinds == {True}:
        return _llamacpp_slots(cfg, size_slots)
    return _pytorch_slots(cfg, size_slots)


def _share(cfg, size_slots, kv: int, train_ctx: int, n_models: int) -> tuple[int, int]:
    n_slots, ctx = size_slots(kv, cfg.ctx, train_ctx, cfg.max_concurrency)
    if cfg.max_concurrency is None:
        n_slots = max(1, n_slots // n_models)
    return n_slots, ctx


def _warm(batch, engine) -> None:
    from ..engines.batching import Feed
    slot, _ = batch.start([0], engine.tokenize("Hello"))
    batch.set_sampler(slot, 0.0, 1.0, None)
    batch.decode([Feed(slot, engine.tokenize("Hello"), True)])
    batch.release(slot)


def _llamacpp_slots(cfg, size_slots) -> dict:
    from ..engines import open_engine
    from ..engines.llama_lib import llama_cpp
    from ..engines.llamacpp_batch import LlamaCppBatch, kv_bytes_per_token
    from ..models.io import check_gguf
    C = llama_cpp()
    if cfg.engine == "pytorch":
        raise SlmError("LoRA .gguf adapters run on llama.cpp", "drop --engine pytorch, or "
                       "pass adapter directories")
    engine = open_engine(cfg.model, "llama.cpp", n_ctx=256, n_threads=cfg.n_threads)
    model = engine.llm._model.model
    n_slots, ctx = _share(cfg, size_slots, kv_bytes_per_token(engine),
                          int(engine.llm._model.n_ctx_train()), 1 + len(cfg.adapters))
    out = {cfg.model_id(): LlamaCppBatch(engine, n_slots, ctx, n_threads=cfg.n_threads,
                                         n_batch=max(cfg.step_tokens, n_slots))}
    for name, path in cfg.adapters.items():
        check_gguf(Path(path))
        ad = C.llama_adapter_lora_init(model, str(path).encode())
        if not ad:
            raise SlmError(f"llama.cpp cannot apply --adapter {name}={path} to {cfg.model}",
                           "export the adapter from this base (`slm export ADAPTER_DIR "
                           "--format gguf-lora`)")
        batch = LlamaCppBatch(engine, n_slots, ctx, n_threads=cfg.n_threads,
                              n_batch=max(cfg.step_tokens, n_slots))
        ads = (C.llama_adapter_lora_p_ctypes * 1)(ad)
        if C.llama_set_adapters_lora(batch.ctx, ads, 1, (ctypes.c_float * 1)(1.0)):
            raise SlmError(f"llama.cpp could not set --adapter {name}={path}",
                           "export the adapter again from this base")
        batch.lora = ad                      # held as long as the context that uses it
        out[name] = batch
    for batch in out.values():
        _warm(batch, engine)
    return out


class AdapterView:
    """One adapter of a multi-adapter PEFT model, called as a model of its own."""

    def __init__(self, model, name: str, lock: threading.Lock):
        self._model, self._name, self._lock = model, name, lock

    def __call__(self, input_ids=None, **kw):
        with self._lock:
            return self._model(input_ids=input_ids,
                               adapter_names=[self._name] * input_ids.shape[0], **kw)

    def eval(self):
        self._model.eval()
        return self

    def __getattr__(self, name):
        return getattr(self._model, name)


def _pytorch_slots(cfg, size_slots) -> dict:
    from peft import PeftModel

    from ..engines.hf import HFEngine
    from ..engines.hf_batch import HFBatch, kv_bytes_per_token
    from ..models.io import SLM, adapter_dir, load
    from ..tune.adapters import check_adapter_base
    if cfg.engine == "llama.cpp" or str(cfg.model).endswith(".gguf"):
        raise SlmError("adapter directories run on the PyTorch engine, with the base as "
                       "an HF model", "export them (`slm export DIR --format gguf-lora`) to "
                       "serve them on a .gguf base")
    slm = load(cfg.model, device=cfg.device)
    peft = None
    for name, path in cfg.adapters.items():
        d = adapter_dir(path)
        if d is None:
            raise SlmError(f"--adapter {name}={path} is not an adapter directory",
                           "pass the adapter/ folder written by `slm finetune` without --merge")
        meta = check_adapter_base(d, slm.model if peft is None else peft)
        if meta.get("method") in ("qlora", "dora"):
            raise SlmError(f"--adapter {name}: {meta['method']} adapters are served one at a "
                           "time", f"serve it alone (--adapter {path}) or merge it")
        if peft is None:
            peft = PeftModel.from_pretrained(slm.model, str(d), adapter_name=name)
        else:
            peft.load_adapter(str(d), adapter_name=name)
    peft.eval()
    lock = threading.Lock()
    ids = {cfg.model_id(): BASE_ADAPTER, **{n: n for n in cfg.adapters}}
    engines = {mid: HFEngine(SLM(AdapterView(peft, ad, lock), slm.tokenizer,
                                 f"{slm.spec}+{ad}", slm.meta, slm.path))
               for mid, ad in ids.items()}
    first = next(iter(engines.values()))
    n_slots, ctx = _share(cfg, size_slots, kv_bytes_per_token(first),
                          int(first.context_length), len(ids))
    out = {mid: HFBatch(eng, n_slots, ctx) for mid, eng in engines.items()}
    for mid, batch in out.items():
        _warm(batch, engines[mid])
    return out
