"""Right-size a model for the hardware: probe the machine, predict, recommend.

``probe()`` measures this machine once (memory read bandwidth, fp32/bf16
matmul throughput, free RAM, cores) and caches it in ``cache_dir()``.
``predict(name, qtype, probe, context)`` gives the memory a catalog model
needs (weights + KV cache + runtime buffers) and its decode speed from a
roofline. A decode step reads every weight once and does 2 FLOPs per weight
in a matrix-vector product, whose speed depends on the weight type: llama.cpp's
kernel for each GGML type reaches its own fraction ``KERNEL_RATE[type]`` of the
probed fp32 matmul rate. So

    t_token = max(bytes_per_token / (EFFICIENCY * bandwidth),
                  sum over types of 2 * weights_of_type / (KERNEL_RATE[type] * fp32 rate))
              + layers * LAYER_OVERHEAD_S

``KERNEL_RATE`` and ``LAYER_OVERHEAD_S`` (fixed cost per decoder layer per
token: thread synchronisation, small ops) were fitted on this machine against
llama.cpp decode of GGUF files of single types; see BENCHMARKS.md, "Build
(default recipe) and plan", for the fit and the check against files it did not
see. ``recommend(...)`` ranks what fits, best first.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SlmError
from .models.catalog import CATALOG, get_entry, hf_config
from .models.gguf_meta import read_header, type_name
from .outputs import atomic_write_text
from .paths import cache_dir

# Fitted on this 2-core machine against llama.cpp decode of GGUF files (bench/build.py plan --fit).
EFFICIENCY = 0.9                 # memory floor: the best fraction of the probed bandwidth reached
LAYER_OVERHEAD_S = 3.2e-5
KERNEL_RATE = {                  # decode (matrix-vector) rate / probed fp32 matmul rate
    "F16": 0.145, "Q8_0": 0.198, "Q5_0": 0.198, "Q4_1": 0.161, "Q4_0": 0.344,
    "Q4_K": 0.412, "Q6_K": 0.47,
}
# Not fitted: F32 and BF16 are priced from F16 (F32 at half its rate), any other type as Q8_0.
KERNEL_RATE.update({"F32": KERNEL_RATE["F16"] / 2, "BF16": KERNEL_RATE["F16"]})
DEFAULT_KERNEL_RATE = KERNEL_RATE["Q8_0"]
TYPE_BPW = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q5_0": 5.5, "Q4_1": 5.0,
            "Q4_0": 4.5, "Q4_K": 4.5, "Q6_K": 6.5625}
PROBE_FILE = "machine_probe.json"
KV_BITS = 16                     # llama.cpp keeps the KV cache in f16 by default
RUNTIME_FRACTION = 0.10          # compute buffers, tokenizer, process: 10% of weights ...
RUNTIME_FIXED = 100 * 2**20      # ... plus 100 MiB


@dataclass(frozen=True)
class QuantType:
    """A GGUF file type: the GGML types of its body (with their shares) and output matrix."""

    name: str
    body: tuple[tuple[str, float], ...]
    out: str
    penalty: float      # quality cost, in log10(parameters): see ``score``

    @property
    def bpw(self) -> float:
        return sum(TYPE_BPW[t] * share for t, share in self.body)

    @property
    def out_bpw(self) -> float:
        return TYPE_BPW[self.out]


# q4_k_m stores half of attn_v/ffn_down as q6_K, the rest as q4_K: ~4.85 bpw on average.
# llama.cpp stores the output matrix (or a tied embedding) of q4 types as q6_K.
QUANT_TYPES = {q.name: q for q in [
    QuantType("f16", (("F16", 1.0),), "F16", 0.0),
    QuantType("q8_0", (("Q8_0", 1.0),), "Q8_0", 0.002),
    QuantType("q4_k_m", (("Q4_K", 0.83), ("Q6_K", 0.17)), "Q6_K", 0.03),
    QuantType("q4_0", (("Q4_0", 1.0),), "Q6_K", 0.06),
]}


@dataclass
class Probe:
    """What this machine can do, measured."""

    bandwidth_gbs: float        # memory read bandwidth, GB/s (all threads)
    fp32_gflops: float
    bf16_gflops: float
    free_bytes: int
    total_bytes: int
    cores: int
    measured_at: str = ""
    load_avg: float = 0.0       # 1-minute load average when probed: other work slows the probe

    @property
    def busy(self) -> bool:
        """Whether other work was running when probed (the figures are then too low)."""
        return self.load_avg > self.cores


@dataclass
class Shape:
    """What decode cost depends on, read from a model's config."""

    layers: int
    kv_heads: int
    head_dim: int
    heads: int
    vocab: int
    hidden: int
    tied: bool
    params: int
    active_params: int
    window_layers: int = 0      # layers with a sliding-window KV cache
    window: int = 0


@dataclass
class Prediction:
    model: str
    qtype: str
    context: int
    weights_bytes: int
    kv_bytes: int
    runtime_bytes: int
    total_bytes: int
    bytes_per_token: int
    flops_per_token: int
    tok_s: float
    bound: str                  # "memory" or "compute"
    params: int
    active_params: int
    available: bool = False
    fits: bool = False
    fast_enough: bool = True
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- probe

def _best_of(fn, n: int) -> float:
    return min(_timed(fn) for _ in range(n))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_bandwidth(n_bytes: int = 2**30, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: sum of a float32 tensor far larger than the caches."""
    import torch
    x = torch.ones(n_bytes // 4, dtype=torch.float32)
    x.sum()                                             # touch every page first
    return n_bytes / _best_of(lambda: x.sum(), repeats) / 1e9


def measure_matmul(dtype_name: str, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an (n, n) @ (n, n) matmul: 2 n^3 FLOPs each."""
    import torch
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 4 * 2 * n**3 / _best_of(lambda: [a @ b for _ in range(4)], repeats) / 1e9


def probe_machine() -> Probe:
    """Measure this machine now (a few seconds)."""
    import psutil
    vm = psutil.virtual_memory()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return Probe(bandwidth_gbs=round(measure_bandwidth(), 2),
                 fp32_gflops=round(measure_matmul("float32"), 1),
                 bf16_gflops=round(measure_matmul("bfloat16"), 1),
                 free_bytes=int(vm.available), total_bytes=int(vm.total),
                 cores=os.cpu_count() or 1, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                 load_avg=round(load, 2))


def load_probe(reprobe: bool = False, path: Path | None = None) -> Probe:
    """The cached probe of this machine, measuring it on first use (or when ``reprobe``)."""
    path = path or cache_dir() / PROBE_FILE
    if path.exists() and not reprobe:
        try:
            return Probe(**json.loads(path.read_text()))
        except (TypeError, ValueError):
            pass                                        # stale format: measure again
    probe = probe_machine()
    atomic_write_text(path, json.dumps(asdict(probe), indent=2))
    return probe


# ---------------------------------------------------------------- model shapes

def shape_of(config, params: int, active_params: int | None = None) -> Shape:
    """A :class:`Shape` from a transformers config object."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = getattr(config, "num_key_value_heads", None)
    if kv is None:
        kv = 1 if getattr(config, "multi_query", False) else heads
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None) or 0
    n_window = sum(1 for t in layer_types if t == "sliding_attention") if window else 0
    return Shape(layers=config.num_hidden_layers, kv_heads=kv, head_dim=head_dim, heads=heads,
                 vocab=config.vocab_size, hidden=config.hidden_size,
                 tied=bool(getattr(config, "tie_word_embeddings", False)), params=params,
                 active_params=active_params or params, window_layers=n_window, window=window)


def catalog_shape(name: str) -> Shape:
    entry = get_entry(name)
    return shape_of(hf_config(entry), entry.params, entry.active_params)


# ---------------------------------------------------------------- predictions

def kv_bytes(shape: Shape, context: int, bits: int = KV_BITS) -> int:
    """K and V for every layer: 2 * kv_heads * head_dim values per token per layer."""
    per_token_layer = 2 * shape.kv_heads * shape.head_dim * bits / 8
    full = shape.layers - shape.window_layers
    tokens = full * context + shape.window_layers * min(context, shape.window or context)
    return int(per_token_layer * tokens)


def weights_read(shape: Shape, q: QuantType) -> dict[str, float]:
    """Weights read per token by GGML type: the active body at ``q.body``, the head at ``q.out``."""
    emb = shape.vocab * shape.hidden
    active_body = shape.active_params - emb * (1 if shape.tied else 2)
    out: dict[str, float] = {}
    for t, share in q.body:
        out[t] = out.get(t, 0) + active_body * share
    out[q.out] = out.get(q.out, 0) + emb
    return out


def weight_bytes(shape: Shape, q: QuantType) -> tuple[int, int]:
    """(bytes on disk/in memory, bytes read per decoded token) of the weights.

    The output matrix (vocab x hidden) is stored at ``q.out_bpw``; an untied input
    embedding is stored at ``q.bpw`` but a token reads only its own row of it.
    """
    emb = shape.vocab * shape.hidden
    body = shape.params - emb * (1 if shape.tied else 2)
    stored = body * q.bpw + emb * q.out_bpw + (0 if shape.tied else emb * q.bpw)
    read = sum(TYPE_BPW[t] * n for t, n in weights_read(shape, q).items())
    return int(stored / 8), int(read / 8)


def kernel_seconds(weights: dict[str, float], probe: Probe) -> float:
    """Time of the matrix-vector products over ``weights`` (count read per token, by type)."""
    return sum(2 * n / (KERNEL_RATE.get(t, DEFAULT_KERNEL_RATE) * probe.fp32_gflops * 1e9)
               for t, n in weights.items())


def decode_rate(shape: Shape, bytes_per_token: int, weights: dict[str, float], probe: Probe,
                position: int, kv_bits: int = KV_BITS) -> tuple[float, str, int]:
    """(tokens/s, bound, FLOPs per token) for decoding at ``position`` tokens of context.

    ``weights`` counts the weights read per token by GGML type.
    """
    kv_read = kv_bytes(shape, position, kv_bits)
    attn_ctx = (shape.layers - shape.window_layers) * position + shape.window_layers * min(
        position, shape.window or position)
    attn_flops = 4 * shape.heads * shape.head_dim * attn_ctx
    flops = 2 * int(sum(weights.values())) + attn_flops
    t_mem = (bytes_per_token + kv_read) / (EFFICIENCY * probe.bandwidth_gbs * 1e9)
    t_compute = kernel_seconds(weights, probe) + attn_flops / (probe.fp32_gflops * 1e9)
    t = max(t_mem, t_compute) + shape.layers * LAYER_OVERHEAD_S
    return 1.0 / t, ("memory" if t_mem >= t_compute else "compute"), int(flops)


def predict(name: str, qtype: str, probe: Probe, context: int = 2048,
            shape: Shape | None = None) -> Prediction:
    """Memory and decode speed of catalog model ``name`` stored as ``qtype``.

    Decode speed is given at half the context filled (the average over a
    conversation that fills it).
    """
    if qtype not in QUANT_TYPES:
        raise SlmError(f"unknown quantization type '{qtype}'",
                       f"use one of: {', '.join(QUANT_TYPES)}")
    q = QUANT_TYPES[qtype]
    shape = shape or catalog_shape(name)
    stored, read = weight_bytes(shape, q)
    kv = kv_bytes(shape, context)
    runtime = int(RUNTIME_FRACTION * stored + RUNTIME_FIXED)
    tok_s, bound, flops = decode_rate(shape, read, weights_read(shape, q), probe,
                                      context // 2)
    return Prediction(model=name, qtype=qtype, context=context, weights_bytes=stored,
                      kv_bytes=kv, runtime_bytes=runtime, total_bytes=stored + kv + runtime,
                      bytes_per_token=read, flops_per_token=flops, tok_s=round(tok_s, 1),
                      bound=bound, params=shape.params, active_params=shape.active_params,
                      score=score(shape, q))


def score(shape: Shape, q: QuantType) -> float:
    """Expected quality: log10 of the parameters, less the quantization penalty.

    At a fixed memory budget a larger model at 4 bits beats a smaller one at 16
    (Dettmers & Zettlemoyer 2023, "The case for 4-bit precision"), so size
    dominates and precision breaks ties. A mixture of experts counts as the
    geometric mean of its total and active parameters.
    """
    return math.log10(math.sqrt(shape.params * shape.active_params)) - q.penalty


def predict_gguf(path: str | Path, probe: Probe, position: int = 64) -> dict:
    """Predicted decode tokens/s of an actual GGUF file, from its real tensor sizes."""
    header = read_header(path)
    arch = str(header.metadata["general.architecture"])
    meta = {k.split(".", 1)[1]: v for k, v in header.metadata.items() if k.startswith(arch + ".")}
    emb = next(t for t in header.tensors if t.name == "token_embd.weight")
    has_out = any(t.name == "output.weight" for t in header.tensors)
    total = sum(t.n_bytes for t in header.tensors)
    read = total - (emb.n_bytes if has_out else 0)
    params = sum(math.prod(t.shape) for t in header.tensors)
    weights: dict[str, float] = {}
    for t in header.tensors:
        if len(t.shape) >= 2 and not (has_out and t is emb):
            name = type_name(t.type)
            weights[name] = weights.get(name, 0) + math.prod(t.shape)
    heads = int(meta["attention.head_count"])
    head_dim = int(meta.get("attention.key_length") or int(meta["embedding_length"]) // heads)
    window = int(meta.get("attention.sliding_window") or 0)
    layers = int(meta["block_count"])
    shape = Shape(layers=layers, kv_heads=int(meta.get("attention.head_count_kv") or heads),
                  head_dim=head_dim, heads=heads, vocab=int(emb.shape[-1]),
                  hidden=int(meta["embedding_length"]), tied=not has_out, params=params,
                  active_params=params, window_layers=(layers * 5 // 6) if window else 0,
                  window=window)
    tok_s, bound, _ = decode_rate(shape, read, weights, probe, position)
    return {"file": str(path), "bytes": total, "bytes_per_token": read, "layers": layers,
            "weights": {k: int(v) for k, v in weights.items()},
            "tok_s": round(tok_s, 1), "bound": bound}


# ---------------------------------------------------------------- recommend

def parse_size(text: str | int | float) -> int:
    """Bytes from ``8G``, ``512MB``, ``1.5GiB``, ``2e9`` (G = 2**30, as RAM is sold)."""
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    mult = units.get(s[-1:], 1)
    try:
        value = float(s[:-1] if s[-1:] in units else s)
    except ValueError:
        raise SlmError(f"cannot read memory size '{text}'",
                       "write it like 8G, 512M or 1.5GiB") from None
    if value <= 0:
        raise SlmError(f"memory size '{text}' must be positive")
    return int(value * mult)


def recommend(memory: int, probe: Probe, *, tokens_per_second: float | None = None,
              context: int = 2048, models: list[str] | None = None) -> list[Prediction]:
    """Every (catalog model, quantization type), best first.

    Those that fit ``memory`` and reach ``tokens_per_second`` come first, ranked by
    :func:`score` and then speed; the rest follow, each with the reason it fails.
    """
    if context < 1:
        raise SlmError(f"context {context} must be at least 1 token")
    rows = []
    for name in models or list(CATALOG):
        shape = catalog_shape(name)
        avail = CATALOG[name].available()
        ctx = min(context, CATALOG[name].context_length)
        for qtype in QUANT_TYPES:
            p = predict(name, qtype, probe, ctx, shape)
            p.available = avail
            _judge(p, memory, tokens_per_second, CATALOG[name].context_length, context)
            rows.append(p)
    rows.sort(key=lambda p: (not (p.fits and p.fast_enough), -p.score, -p.tok_s))
    return rows


def _judge(p: Prediction, memory: int, rate: float | None, max_ctx: int, context: int) -> None:
    gb = 1e9
    p.fits = p.total_bytes <= memory
    p.fast_enough = rate is None or p.tok_s >= rate
    p.reasons.append(f"needs {p.total_bytes / gb:.2f} GB (weights {p.weights_bytes / gb:.2f} + "
                     f"KV {p.kv_bytes / gb:.2f} + runtime {p.runtime_bytes / gb:.2f}) "
                     f"{'<=' if p.fits else '>'} {memory / gb:.2f} GB")
    p.reasons.append(f"~{p.tok_s:.0f} tok/s predicted ({p.bound}-bound, "
                     f"{p.bytes_per_token / 1e6:.0f} MB read per token)"
                     + ("" if rate is None else
                        f" {'>=' if p.fast_enough else '<'} {rate:g} required"))
    if context > max_ctx:
        p.reasons.append(f"context capped at the model's {max_ctx} tokens")
