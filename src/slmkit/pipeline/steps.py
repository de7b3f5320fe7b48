"""The steps a recipe can name, and how the build calls each one.

Every step area exposes a pydantic ``XConfig`` and ``run_x(model, out, cfg) -> dict``
(see the contract in the design notes). This table says where they live, so
recipes hold values only: a step names its kind, never a class path. Modules
are imported lazily, when a recipe uses the step.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import SlmError


@dataclass(frozen=True)
class StepKind:
    """One kind of recipe step.

    Attributes:
        module, config, run: where the step's config class and run function live.
        makes: what its output is: ``"model"`` (HF directory), ``"gguf"`` or ``None``.
        trains: keeps checkpoints under ``<out>.partial/checkpoints`` and resumes.
        takes: which inputs it can read: ``"hf"`` (trainable HF model), ``"quantized"``
            (an HF directory, quantized or not) or ``"any"``.
    """

    name: str
    module: str
    config: str
    run: str
    makes: str | None
    trains: bool = False
    takes: str = "hf"

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


STEPS: dict[str, StepKind] = {k.name: k for k in [
    StepKind("finetune", "slmkit.tune.finetune", "FinetuneConfig", "run_finetune", "model",
             trains=True),
    StepKind("prune", "slmkit.compress.prune", "PruneConfig", "run_prune", "model"),
    StepKind("distill", "slmkit.compress.distill", "DistillConfig", "run_distill", "model",
             trains=True),
    StepKind("quantize", "slmkit.compress.quantize", "QuantizeConfig", "run_quantize", "model"),
    StepKind("export", "slmkit.export", "ExportConfig", "run_export", "gguf", takes="quantized"),
    StepKind("eval", "slmkit.evaluate", "EvalConfig", "run_eval", None, takes="any"),
]}

# Options a build sets for a step kind unless the recipe does: later steps need a full
# model, not an adapter alone.
STEP_DEFAULTS = {"finetune": {"merge": True}}

# Fields the build fills in from the recipe when a step does not set them.
FROM_RECIPE = {"data": "data", "calib": "data", "calib_data": "data", "parity_text": "data",
               "seed": "seed", "general_data": "general_data"}
