"""End to end: the tiny recipe through every step, re-run, interrupted and resumed."""
import json
import math
import shutil

import pytest

from slmkit.pipeline.build import Build, _prepare_work
from slmkit.pipeline.recipe import load_recipe

STEP_DIRS = ["00-base", "01-finetune", "02-vocab", "03-prune", "04-distill", "05-quantize",
             "06-export", "07-eval"]


class Stop(Exception):
    pass


def stop_after(name):
    def hook(res):
        if res.name == name:
            raise Stop(name)
    return hook


def statuses(build):
    return {name: r.status for name, r in build.results.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Build the tiny recipe, interrupted after 'prune' and then resumed."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    recipe = load_recipe("tiny")
    with pytest.raises(Stop):
        Build(recipe, out, after_step=stop_after("prune")).run()
    first = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    build = Build(recipe, out)
    report = build.run()
    return {"out": out, "recipe": recipe, "first": first, "build": build, "report": report}


def test_interrupted_build_kept_finished_steps_only(run):
    assert {"00-base", "01-finetune", "02-vocab", "03-prune"} <= run["first"]
    assert not {"04-distill", "05-quantize", "06-export", "07-eval"} & run["first"]


def test_resumed_build_skips_what_was_done(run):
    st = statuses(run["build"])
    assert st == {"base": "skipped", "finetune": "skipped", "vocab": "skipped", "prune": "skipped",
                  "distill": "ran", "quantize": "ran", "export": "ran", "eval": "ran"}


def test_every_step_wrote_its_artifact_dir(run):
    out = run["out"]
    for d in STEP_DIRS:
        rec = json.loads((out / d / "step.json").read_text())
        assert rec["status"] == "done" and len(rec["key"]) == 64
    for d in STEP_DIRS[:6]:
        assert (out / d / "config.json").exists() and list((out / d).glob("*.safetensors"))
        assert (out / d / "slmkit.json").exists()
    for d in STEP_DIRS[1:6]:
        assert (out / d / "report.json").exists()
    assert (out / "06-export" / "model.gguf").read_bytes()[:4] == b"GGUF"
    assert not any((out / ".work").iterdir())          # no partial outputs or checkpoints left


def test_report_numbers_match_the_artifacts(run):
    out, report = run["out"], run["report"]
    rows = {r["stage"]: r for r in report["stages"]}
    assert list(rows) == ["base", "finetune", "vocab", "prune", "distill", "quantize", "export"]
    assert rows["vocab"]["params"] < rows["finetune"]["params"]
    assert rows["prune"]["params"] < 0.75 * rows["vocab"]["params"]   # 0.6 of the decoder
    assert rows["export"]["bytes"] == (out / "06-export" / "model.gguf").stat().st_size
    # one perplexity scale: per token of the base tokenizer, on the same characters
    assert report["stages"][0]["ppl"] == pytest.approx(rows["base"]["ppl_own_tokens"])
    assert len({r["ppl_ref_tokens"] for r in rows.values()}) == 1
    assert rows["vocab"]["ppl_tokens"] > rows["vocab"]["ppl_ref_tokens"]
    assert rows["finetune"]["ppl_tokens"] == rows["finetune"]["ppl_ref_tokens"]
    assert rows["export"]["engine"] == "llama.cpp" and rows["base"]["engine"] == "pytorch"
    for r in rows.values():
        assert 1 < r["ppl"] < 1e4 and math.isfinite(r["ppl_general"])
        assert r["decode_tok_s"] > 0 and r["peak_rss"] > 0
    c = report["comparison"]
    assert c["original"] == "base" and c["final"] == "export"
    assert c["smaller_x"] == pytest.approx(rows["base"]["bytes"] / rows["export"]["bytes"], rel=1e-3)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["stages"] == json.loads(json.dumps(report["stages"]))
    assert set(report["loss_curves"]) == {"finetune", "distill"}
    assert report["samples"][0]["prompt"] == "def add(a, b):"
    assert report["commands"]["chat"].endswith("06-export/model.gguf")


def test_rerun_does_nothing(run):
    out = run["out"]
    before = {d: (out / d / "step.json").read_text() for d in STEP_DIRS}
    build = Build(run["recipe"], out)
    report = build.run()
    assert set(statuses(build).values()) == {"skipped"}
    assert {d: (out / d / "step.json").read_text() for d in STEP_DIRS} == before
    assert report["stages"] == json.loads(json.dumps(run["report"]["stages"]))


def test_deleted_step_reruns_alone(run):
    out = run["out"]
    old_hash = json.loads((out / "05-quantize" / "step.json").read_text())["artifact_hash"]
    shutil.rmtree(out / "05-quantize")
    build = Build(run["recipe"], out)
    build.run()
    st = statuses(build)
    assert st["quantize"] == "ran"
    assert all(st[n] == "skipped" for n in ("base", "finetune", "vocab", "prune", "distill",
                                            "export"))
    same = build.results["quantize"].artifact_hash == old_hash
    assert st["eval"] == ("skipped" if same else "ran")


def test_work_dir_keeps_checkpoints_only_for_the_same_key(tmp_path):
    work = tmp_path / ".work" / "03-distill"
    ckpt = work.with_name(work.name + ".partial") / "checkpoints"
    ckpt.mkdir(parents=True)
    _prepare_work(work, "key-a")
    assert ckpt.exists()                      # first attempt: nothing to compare with
    _prepare_work(work, "key-a")
    assert ckpt.exists()                      # same step, same options: resume
    _prepare_work(work, "key-b")
    assert not ckpt.exists()                  # options changed: start over


def test_eval_benchmarks_only_the_original_and_the_result(run, tmp_path):
    from slmkit.evaluate import EvalConfig
    from slmkit.pipeline.report import comparison
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text("\n".join(json.dumps({"question": f"{i} plus one is", "answer": 0,
                                          "choices": [str(i + 1), "a fish"]}) for i in range(4)))
    i = len(run["recipe"].steps) - 1                  # the eval step
    cfg = EvalConfig(task=str(quiz), speed=False, isolate=False, max_eval_tokens=128,
                     max_length=64, stride=64)
    report = run["build"]._eval(i, cfg)
    stages = [r["stage"] for r in report["models"]]
    assert len(stages) == 7 and stages[0] == "base"     # base and six steps that made models
    assert [r["stage"] for r in report["models"] if r.get("tasks")] == ["base", "export"]
    rows = comparison(report["models"], "base", "export")["kept_lost"]
    bench = [r for r in rows if r["kind"] == "benchmark"]
    assert bench and all(0 <= r["original"] <= 1 and 0 <= r["final"] <= 1 for r in bench)
    assert {r["what"] for r in rows} >= {"domain perplexity", "domain bits/byte", "size on disk"}
