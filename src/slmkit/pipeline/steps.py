"""The step contract: every kind of step a recipe (and ``slm <verb>``) can run, in one table.

A step kind is a config class (pydantic, ``extra="forbid"``) and a transform
``run_x(model, out, cfg, ...) -> report``: it reads a model, writes what it
makes to ``out`` and returns a report of what it did. Its entry in
:data:`STEPS` says the rest, once:

- where the config class and the transform live (imported when a recipe uses
  the step, so a recipe names a kind, never a class path);
- what it takes (``hf``: a trainable HF model; ``quantized``: an HF directory,
  quantized or not; ``any``) and what it makes (``hf``, ``quantized``, ``gguf``,
  an ``adapter`` when :attr:`StepKind.adapter_when` says so, or nothing);
- which config fields name data, and which recipe field fills each one in when
  the step does not set it; which field names a teacher; which options a build
  sets unless the recipe does;
- whether it trains (checkpoints, resumes) or compares every stage (eval).

The recipe checker (:mod:`slmkit.pipeline.recipe`), the build
(:mod:`slmkit.pipeline.build`) and the CLI read these declarations; none of
them names a step kind. The plumbing every transform shares (the output
guard, a private copy of the input, writing model + report + history
atomically) is in :mod:`slmkit.step`.

Adding a step kind is its own module and one line here. A module
``slmkit/compress/merge.py`` with::

    class MergeConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        calib: str = "python-docs"
        alpha: float = Field(0.5, gt=0, lt=1, description="weight of the first model")

    def run_merge(model, out, cfg: MergeConfig, *, overwrite=False) -> dict:
        slm = open_input(model, "auto")                  # slmkit.step
        ...                                              # the transform itself
        write_outputs(slm, out, step="merge", config=cfg.model_dump(), report=report,
                      overwrite=overwrite)
        return report

becomes a recipe step (``- {step: merge, alpha: 0.3}``, its options checked
against ``MergeConfig``, ``calib`` filled from the recipe's ``data``, the data
fingerprinted into the step's key) with::

    StepKind("merge", "slmkit.compress.merge", "MergeConfig", "run_merge", "hf",
             data={"calib": "data"}),
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from ..errors import SlmError

MODEL_KINDS = ("hf", "quantized")          # outputs that are model directories


@dataclass(frozen=True, eq=False)
class StepKind:
    """One kind of step.

    Attributes:
        name: the kind's name in a recipe (``step: prune``).
        module, config, run: where the config class and the transform live.
        makes: what it writes: ``"hf"`` (an HF model directory), ``"quantized"`` (an HF
            directory of packed weights), ``"gguf"`` (a file) or ``None`` (a report only).
        takes: which inputs it can read: ``"hf"``, ``"quantized"`` (an HF directory,
            quantized or not) or ``"any"``.
        trains: keeps checkpoints under ``<out>.partial/checkpoints`` and resumes.
        data: config fields that name data -> the recipe fields that fill them in when the
            step does not set them, first one set wins (an empty tuple: never filled in).
            Their contents are fingerprinted into the step's key and checked to exist.
        teacher: the config field naming a teacher (an earlier step or ``base``), if any.
        defaults: options a build sets unless the recipe does.
        compares: reads every stage so far (or those named in ``stages:``), not one input.
        adapter_when: given the step's options, whether it writes an adapter only.
    """

    name: str
    module: str
    config: str
    run: str
    makes: str | None
    takes: str = "hf"
    trains: bool = False
    data: dict[str, tuple[str, ...]] = field(default_factory=dict)
    teacher: str | None = None
    defaults: dict[str, object] = field(default_factory=dict)
    compares: bool = False
    adapter_when: Callable[[dict], bool] | None = None

    @property
    def makes_model(self) -> bool:
        """Whether its output is a model directory a later step can read."""
        return self.makes in MODEL_KINDS

    def output_kind(self, options: dict) -> str | None:
        """What a step of this kind with ``options`` writes (see :attr:`makes`)."""
        if self.adapter_when is not None and self.adapter_when(options):
            return "adapter"
        return self.makes

    def config_class(self):
        return getattr(self._module(), self.config)

    def run_function(self):
        return getattr(self._module(), self.run)

    def _module(self):
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise SlmError(f"recipe step '{self.name}' is not available in this install "
                           f"({self.module}: {exc})", "update slmkit or remove the step") from exc


def _adapter_only(options: dict) -> bool:
    """A finetune without ``merge`` writes the adapter only (full fine-tuning: the model)."""
    return options.get("merge") is False and options.get("method", "lora") != "full"


STEPS: dict[str, StepKind] = {k.name: k for k in [
    StepKind("finetune", "slmkit.tune.finetune", "FinetuneConfig", "run_finetune", "hf",
             trains=True, data={"data": ("data",), "val_data": ()},
             defaults={"merge": True},        # later steps need a model, not an adapter alone
             adapter_when=_adapter_only),
    StepKind("prune", "slmkit.compress.prune", "PruneConfig", "run_prune", "hf",
             data={"calib": ("data",), "eval_data": ("eval_data",)}),
    StepKind("distill", "slmkit.compress.distill", "DistillConfig", "run_distill", "hf",
             trains=True, data={"data": ("data",)}, teacher="teacher"),
    StepKind("quantize", "slmkit.compress.quantize", "QuantizeConfig", "run_quantize",
             "quantized", data={"calib": ("data",)}),
    StepKind("export", "slmkit.export", "ExportConfig", "run_export", "gguf", takes="quantized",
             data={"parity_text": ("data",)}),
    StepKind("eval", "slmkit.evaluate", "EvalConfig", "run_eval", None, takes="any",
             data={"data": ("eval_data", "data"), "general_data": ("general_data",),
                   "task": ()}, compares=True),
]}

# Recipe fields every step with a field of the same name takes unless it sets its own.
SHARED = ("seed",)


def data_fields() -> set[str]:
    """Every config field, of any step kind, that names data."""
    return {f for kind in STEPS.values() for f in kind.data}
