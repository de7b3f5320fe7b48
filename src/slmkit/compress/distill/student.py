"""The student: a new one from a config, and the module the loop trains (the student
plus the projections used for hidden-state matching)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ...errors import SlmError
from ...models.catalog import CATALOG, hf_config
from ...models.io import SLM, load
from .config import DistillConfig


def _config_base(config: str | dict | Path) -> dict:
    if isinstance(config, dict):
        return dict(config)
    if str(config) in CATALOG:
        return dict(CATALOG[str(config)].config)
    if not Path(config).is_file():
        raise SlmError(f"student config '{config}' is not a catalog name or a JSON file",
                       "pass e.g. smollm2-135m or config.json")
    try:
        base = json.loads(Path(config).read_text())
    except (ValueError, UnicodeDecodeError):
        raise SlmError(f"--student-config {config} is not valid JSON",
                       "pass a config.json of an HF model") from None
    if not isinstance(base, dict) or "model_type" not in base:
        raise SlmError(f"--student-config {config} has no model_type",
                       "pass a config.json of an HF model")
    return base


def _check_override(base: dict, defaults: dict, key: str, value, option: str) -> None:
    if key not in defaults:
        raise SlmError(f"{option} {key}: the {base['model_type']} config has no field "
                       f"'{key}'", "e.g. num_hidden_layers, hidden_size, "
                       "intermediate_size, num_attention_heads")
    old = defaults[key]
    if not _same_type(old, value):
        raise SlmError(f"{option} {key}={value!r}: expected {type(old).__name__}, like the "
                       f"default {json.dumps(old)}", f"e.g. {option} {key}={json.dumps(old)}")
    if isinstance(old, (int, float)) and not isinstance(old, bool) and value <= 0:
        raise SlmError(f"{option} {key}={value}: must be positive")


def _same_type(old, value) -> bool:
    """Whether ``value`` may replace the config value ``old`` (an int where a float is)."""
    if old is None or isinstance(old, dict):
        return True
    if isinstance(old, bool) or isinstance(value, bool):
        return isinstance(old, bool) and isinstance(value, bool)
    if isinstance(old, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(old))


def student_config(config: str | dict | Path, overrides: dict | None = None,
                   option: str = "--set"):
    """The HF config of a new student: a catalog name, a config JSON file or a dict, with
    ``overrides`` checked against the fields that config has (a misspelt field or a value
    of the wrong type is refused, naming ``option``).

    Returns:
        (config dict, the transformers config built from it).
    """
    base = _config_base(config)
    defaults = hf_config(base).to_dict()
    for key, value in (overrides or {}).items():
        _check_override(base, defaults, key, value, option)
    base.update(overrides or {})
    try:
        return base, hf_config(base)
    except Exception as exc:            # transformers' own checks (head dims, ...)
        why = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise SlmError(f"{option}: the student config is not valid ({why})",
                       "check the values given with --set") from None


def init_student(teacher, config: str | dict | Path, seed: int = 0, **overrides):
    """A randomly initialised student with the teacher's tokenizer.

    Args:
        teacher: teacher spec or SLM (gives tokenizer and vocabulary).
        config: a catalog name, a JSON file of an HF config, or a dict.
        seed: initialisation seed.
        overrides: config fields to change, e.g. ``num_hidden_layers=8``.
    """
    from transformers import AutoModelForCausalLM          # heavy: only when a student is made
    base, _ = student_config(config, overrides)                # checked before any load
    t = teacher if isinstance(teacher, SLM) else load(teacher)
    tc = t.model.config
    base.update(vocab_size=tc.vocab_size, bos_token_id=tc.bos_token_id,
                eos_token_id=tc.eos_token_id, pad_token_id=getattr(tc, "pad_token_id", None))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(base)).eval()
    return SLM(model, t.tokenizer, f"init:{config}",
               {"source": f"init:{config}", "history": []})


# ---------------------------------------------------------------- the trained module

def default_layer_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student layer s -> teacher layer round((s+1) * Lt / Ls) - 1 (last onto last)."""
    return [(s, round((s + 1) * n_teacher / n_student) - 1) for s in range(n_student)]


class DistillModule(nn.Module):
    """The student plus the projections used for hidden-state matching (what is trained):
    a learned linear map per pair when the widths differ, none when they are equal."""

    def __init__(self, student: nn.Module, pairs: list[tuple[int, int]],
                 student_width: int, teacher_width: int):
        super().__init__()
        self.student = student
        self.pairs = list(pairs)
        self.proj = nn.ModuleList(
            nn.Identity() if student_width == teacher_width
            else nn.Linear(student_width, teacher_width, bias=False) for _ in self.pairs)


def _n_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def _width(model: nn.Module) -> int:
    return int(model.config.hidden_size)


def check_pairs(pairs, n_student: int, n_teacher: int) -> None:
    for s, t in pairs:
        if not (0 <= s < n_student and 0 <= t < n_teacher):
            raise SlmError(f"layer pair ({s}, {t}) is out of range (student has {n_student} "
                           f"layers, teacher {n_teacher})", "fix layer_pairs")


def build_module(cfg: DistillConfig, student: nn.Module, teacher: nn.Module | None
                 ) -> DistillModule:
    """Student + hidden-state projections (seeded, so every rank builds the same)."""
    pairs: list = []
    t_width = _width(student)
    if cfg.w_hidden > 0:
        pairs = cfg.layer_pairs or default_layer_pairs(_n_layers(student), _n_layers(teacher))
        check_pairs(pairs, _n_layers(student), _n_layers(teacher))
        t_width = _width(teacher)
    torch.manual_seed(cfg.seed)
    return DistillModule(student, pairs, _width(student), t_width)
