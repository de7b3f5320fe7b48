"""The tiny recipe's steps on a tiny random model of every family in the architecture table."""
import json

import pytest

from slmkit.compress.prune.api import PruneConfig, prune_model
from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_slm
from slmkit.pipeline.build import Build
from slmkit.pipeline.recipe import load_recipe

# Gemma 3: byte-fallback tokenizer, tied head, sliding-window layers; Mistral: the Llama
# graph with a byte-fallback tokenizer
RUNS = ["llama", "qwen2", "gemma3_text", "mistral"]


@pytest.mark.parametrize("family", RUNS)
def test_tiny_recipe_runs_on_every_family(family, tmp_path):
    recipe = load_recipe("tiny", overrides={"base": f"tiny:{family}"})
    report = Build(recipe, tmp_path / family).run()
    export = [json.loads(p.read_text()) for p in (tmp_path / family).glob("*-export/*.json")]
    export = next(r for r in export if "llamacpp_load" in r)
    assert export["llamacpp_load"]["ok"]
    assert export["parity"]["tokenizer_match"]
    assert export["parity"]["argmax_agreement"] >= 0.9, export["parity"]
    rows = {r["stage"]: r for r in report["stages"]}
    assert list(rows) == ["base", "finetune", "vocab", "prune", "distill", "quantize", "export"]
    assert rows["prune"]["params"] < rows["vocab"]["params"]
    assert rows["export"]["engine"] == "llama.cpp" and 1 < rows["export"]["ppl"] < 1e4



def test_width_pruning_refuses_a_mixture_of_experts_in_one_line():
    """Mixtral's experts have no single MLP width: the width step says so and names the
    method that does apply, before any calibration runs."""
    model = tiny_slm("mixtral").model
    with pytest.raises(SlmError, match="mixture-of-experts MLP of 'mixtral'.*depth"):
        prune_model(model, None, PruneConfig(method="width", target=0.6))
