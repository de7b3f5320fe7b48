"""Sequence-level distillation data: slm synth."""
import json

import pytest

from slmkit.data import read_records
from slmkit.data.synth import SynthConfig, read_prompts, run_synth
from slmkit.errors import SlmError
from slmkit.models.io import save
from slmkit.models.tiny import tiny_slm


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "teacher"
    save(tiny_slm("llama", seed=0), path)
    return path


def test_synth_writes_usable_reproducible_records(teacher, tmp_path):
    (tmp_path / "topics.txt").write_text("# topics\nlist comprehensions\n\ngenerators\n")
    cfg = SynthConfig(teacher=str(teacher), prompts=str(tmp_path / "topics.txt"),
                      template="Explain {prompt} with an example.", n_per_prompt=2,
                      max_tokens=12, temperature=0.9, seed=3)
    rep = run_synth(tmp_path / "a.jsonl", cfg, progress=False)
    run_synth(tmp_path / "b.jsonl", cfg, progress=False)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    recs = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert rep["prompts"] == 2 and rep["records"] + rep["dropped"] == 4
    assert recs[0]["prompt"] == "Explain list comprehensions with an example."
    assert [r["seed"] for r in recs] == [3, 4, 5, 6][:len(recs)]
    assert rep["completion_tokens"] > 0
    assert len(read_records(tmp_path / "a.jsonl")) == len(recs)   # finetune/distill can read it
    with pytest.raises(SlmError, match="already exists"):
        run_synth(tmp_path / "a.jsonl", cfg, progress=False)


def test_prompt_files_and_bad_input(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"topic": "decorators"}\n{"prompt": "What is a set?"}\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["decorators", "What is a set?"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(SlmError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n')
    with pytest.raises(SlmError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="template"):
        SynthConfig(teacher="x", prompts="y", template="no slot")
