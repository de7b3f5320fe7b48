"""Run a recipe: one artifact directory per step, skipped when unchanged, resumable.

    runs/<name>/
      00-base/          the base model (or a pointer to it) + step.json
      01-finetune/      what the step wrote (model, report.json) + step.json
      ...
      report.json, report.html

Each step's key is a SHA-256 over its kind, its resolved options, the content
hash of the artifact it reads (and of its teacher) and a fingerprint of the
data it names. ``step.json`` stores the key and the content hash of what the
step wrote, so the next step's key changes exactly when its input does.

A step runs in ``<run>/.work/NN-name`` (a fixed path, so a training step finds
its checkpoints in ``.work/NN-name.partial/checkpoints`` after an interruption)
and is renamed into place when done: a step directory is complete or absent.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data import read_records
from ..errors import SlmError
from ..models.catalog import CATALOG
from ..models.io import builtin_gguf, load, replace_dir, save
from ..models.tiny import TINY_FAMILIES, tiny_slm
from .adapt import resolve
from .recipe import Recipe, input_of, resolved_options
from .report import write_report
from .sizing import open_base
from .steps import MODEL_KINDS, STEPS

STEP_FILE = "step.json"
WORK = ".work"


@dataclass
class StepResult:
    """What happened to one step in this build."""

    name: str
    step: str
    dir: Path
    status: str                     # "ran" or "skipped"
    key: str
    artifact: str | None            # what the next step reads (dir, .gguf) or None
    artifact_hash: str | None
    seconds: float
    report: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


# ---------------------------------------------------------------- hashing

def sha256_files(paths: list[Path]) -> str:
    """Content hash of files (names and bytes), in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def artifact_hash(path: Path) -> str:
    """Content hash of a model: a file, or a directory's weights, config and tokenizer."""
    path = Path(path)
    if path.is_file():
        return sha256_files([path])
    names = ("*.safetensors", "*.gguf", "config.json", "tokenizer.json", "adapter_config.json")
    files = sorted({p for pat in names for p in path.glob(pat)})
    if not files:
        raise SlmError(f"{path} holds no model files to hash", "check the step's output")
    return sha256_files(files)


_DATA_FP: dict[str, str] = {}


def data_fingerprint(spec: str) -> str:
    """Content hash of the records a data spec reads (cached per process)."""
    if spec not in _DATA_FP:
        text = json.dumps(read_records(spec), sort_keys=True)
        _DATA_FP[spec] = hashlib.sha256(text.encode()).hexdigest()
    return _DATA_FP[spec]


def step_key(kind: str, options: dict, input_hash: str, teacher_hash: str | None) -> str:
    """The key that decides whether a finished step can be reused."""
    # Where a step runs (resume, device) does not change what it makes.
    step = STEPS.get(kind)
    opts = {k: v for k, v in options.items()
            if k not in ("resume", "device") and not (step and k == step.teacher)}
    named = step.data if step else ()
    data = {k: data_fingerprint(v) for k, v in opts.items() if k in named and isinstance(v, str)}
    blob = json.dumps({"step": kind, "options": opts, "input": input_hash,
                       "teacher": teacher_hash, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- the build

class Build:
    """Runs a :class:`Recipe` into ``out``.

    Args:
        recipe: a validated recipe.
        out: the run directory (``runs/<name>`` by default).
        force: start from scratch (delete ``out`` first).
        console: a rich console for progress (default: the CLI's).
        after_step: called with each :class:`StepResult` (tests use it to interrupt).
        device: where every step that runs PyTorch runs, over the recipe's ``device``.
    """

    def __init__(self, recipe: Recipe, out: str | Path | None = None, *, force: bool = False,
                 console=None, after_step: Callable[[StepResult], None] | None = None,
                 device: str | None = None):
        from rich.console import Console
        self.recipe = recipe
        self.out = Path(out) if out else Path("runs") / recipe.name
        self.force = force
        self.console = console or Console(stderr=False)
        self.after_step = after_step
        self.device = device
        self.results: dict[str, StepResult] = {}
        self.sizing = None

    def resolve(self) -> dict:
        """Resolve the recipe's adaptive figures against the base and the data (once),
        print them, and return them (see :mod:`slmkit.pipeline.sizing`).

        Raises:
            SlmError: data too small for a step, with the minimum.
        """
        if self.sizing is None:
            tok, model = open_base(self.recipe.base, self.recipe.seed)
            self.recipe, self.sizing = resolve(self.recipe, tok, model)
            print_sizing(self.sizing, self.console)
        return self.sizing.as_dict()

    def run(self) -> dict:
        """Run every step (skipping unchanged ones), then write the report.

        Returns:
            the build report (also ``out/report.json``).
        """
        _quiet_transformers()
        self.resolve()
        if self.force and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._save_recipe()
        n = len(self.recipe.steps)
        t0 = time.time()
        self._announce(0, n, "base", self.recipe.base)
        self._done(self.base())
        for i, step in enumerate(self.recipe.steps):
            self._announce(i + 1, n, step.name, step.step)
            try:
                self._done(self.step(i))
            except BaseException:
                self.console.print(f"[yellow]stopped in step '{step.name}'[/]: finished steps "
                                   "are kept; run the same command again to resume",
                                   highlight=False)
                raise
        self.console.rule("[bold]report")
        return write_report(self, time.time() - t0)

    # ------------------------------------------------------------ base

    def base(self) -> StepResult:
        """The base model as stage ``base`` (tiny models are written to ``00-base``)."""
        spec = self.recipe.base
        d = self.out / "00-base"
        key = hashlib.sha256(f"base\0{spec}\0{self.recipe.seed}".encode()).hexdigest()
        old = _read_step(d)
        if old and old.get("key") == key:
            res = self._result_from(old, d, "skipped")
        else:
            t0 = time.time()
            artifact, h = self._materialise_base(spec, d)
            res = StepResult("base", "base", d, "ran", key, artifact, h, time.time() - t0,
                             config={"base": spec})
            _write_step(d, res)
        self.results["base"] = res
        return res

    def _materialise_base(self, spec: str, d: Path) -> tuple[str, str]:
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if spec.startswith("tiny:"):
            family = spec.split(":", 1)[1]
            if family not in TINY_FAMILIES:
                raise SlmError(f"unknown tiny family '{family}'",
                               f"use one of: {', '.join(TINY_FAMILIES)}")
            save(tiny_slm(family, seed=self.recipe.seed), tmp)
            replace_dir(tmp, d)
            return str(d), artifact_hash(d)
        source = builtin_gguf(spec) if spec in CATALOG else Path(spec).expanduser()
        if not source.exists():                       # a cached hub id
            source = Path(load(spec).path)
        d.mkdir(parents=True, exist_ok=True)
        return spec, artifact_hash(source)

    # ------------------------------------------------------------ steps

    def step(self, i: int) -> StepResult:
        """Run (or skip) step ``i`` of the recipe."""
        step = self.recipe.steps[i]
        d = self.out / f"{i + 1:02d}-{step.name}"
        src = self.results[input_of(self.recipe, i)]
        kind = step.kind
        teacher = self.results.get(step.options.get(kind.teacher, "")) if kind.teacher else None
        opts = resolved_options(self.recipe, i, teacher.artifact if teacher else None)
        if self.device and "device" in step.kind.config_class().model_fields:
            opts["device"] = self.device          # --device overrides the recipe's
        input_hash = src.artifact_hash or ""
        if kind.compares:                          # it reads every stage it compares
            input_hash = json.dumps([(r.name, r.artifact_hash) for r in self._stages(i)])
        key = step_key(step.step, opts, input_hash, teacher.artifact_hash if teacher else None)
        old = _read_step(d)
        if old and old.get("key") == key and old.get("status") == "done":
            res = self._result_from(old, d, "skipped")
        else:
            res = self._execute(i, d, src, opts, key)
        self.results[step.name] = res
        if self.after_step:
            self.after_step(res)
        return res

    def _execute(self, i: int, d: Path, src: StepResult, opts: dict, key: str) -> StepResult:
        step = self.recipe.steps[i]
        work = self.out / WORK / d.name
        _prepare_work(work, key)
        cfg = step.kind.config_class()(**opts)
        t0 = time.time()
        if step.kind.compares:
            report = self._eval(i, cfg)
            work.mkdir(parents=True, exist_ok=True)
            (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
        elif step.kind.makes == "gguf":
            work.mkdir(parents=True, exist_ok=True)
            report = step.kind.run_function()(src.artifact, work / "model.gguf", cfg)
        else:
            report = step.kind.run_function()(src.artifact, work, cfg)
        seconds = time.time() - t0
        artifact = _artifact_in(work, step.kind.makes)
        res = StepResult(step.name, step.step, d, "ran", key,
                         str(_artifact_in(d, step.kind.makes)) if artifact else None,
                         artifact_hash(artifact) if artifact else None, seconds,
                         report=report or {}, config=cfg.model_dump(mode="json"))
        _write_step(work, res)
        replace_dir(work, d)
        _cleanup_work(work)
        return res

    def _eval(self, i: int, cfg) -> dict:
        """Evaluate every stage so far (base first), side by side."""
        stages = self._stages(i)
        if cfg.reference is None and "base" in self.results:   # one scale for every vocabulary
            cfg = cfg.model_copy(update={"reference": self.results["base"].artifact})
        if cfg.split == "auto" and cfg.data == self.recipe.data:  # the build trained on it
            cfg = cfg.model_copy(update={"split": "val"})
        run = self.recipe.steps[i].kind.run_function()
        bench = self._compared(stages) if cfg.task else []
        report = run([r.artifact for r in stages], cfg.model_copy(update={"task": None})
                     if bench else cfg)
        for row, r in zip(report["models"], stages):
            row["stage"] = r.name
            row["step"] = r.step
        if bench:                  # benchmarks take minutes a model: original and result only
            extra = run([r.artifact for r in bench],
                        cfg.model_copy(update={"speed": False, "general_data": None}))
            by_stage = {r["stage"]: r for r in report["models"]}
            for r, row in zip(bench, extra["models"]):
                by_stage[r.name]["tasks"] = row.get("tasks", {})
            report["config"]["task"] = cfg.task
        return report

    def _compared(self, stages: list[StepResult]) -> list[StepResult]:
        """The original (``compare_to``) and the result (the last GGUF, else the last model)
        among ``stages``: the two the build report sets side by side."""
        by = {r.name: r for r in stages}
        original = by.get(self.recipe.compare_to) or by.get("base")
        made = [r for r in stages if r.name != "base"]
        final = ([r for r in made if str(r.artifact).endswith(".gguf")] or made or [None])[-1]
        out = [original] if original else []
        return out + ([final] if final is not None and final is not original else [])

    def _stages(self, i: int) -> list[StepResult]:
        """The stages eval step ``i`` compares: those it names, or all made so far."""
        wanted = self.recipe.steps[i].stages
        return [r for r in self.results.values() if r.artifact
                and (wanted is None or r.name in wanted)]

    # ------------------------------------------------------------ helpers

    def _result_from(self, rec: dict, d: Path, status: str) -> StepResult:
        """A finished step read back from its ``step.json`` (paths taken from where it is now)."""
        report = _read_json(d / "report.json")
        artifact = rec.get("artifact")
        if rec["step"] in STEPS:
            found = _artifact_in(d, STEPS[rec["step"]].makes)
            artifact = str(found) if found else None
            if found and found.suffix == ".gguf":
                report = report or _read_json(found.with_name(found.name + ".report.json"))
        elif rec["step"] == "base" and (d / "config.json").exists():
            artifact = str(d)
        return StepResult(rec["name"], rec["step"], d, status, rec["key"], artifact,
                          rec.get("artifact_hash"), rec.get("seconds", 0.0), report,
                          rec.get("config", {}))

    def _save_recipe(self) -> None:
        text = self.recipe.model_dump_json(indent=2, exclude={"source"})
        (self.out / "recipe.json").write_text(text)

    def _announce(self, i: int, n: int, name: str, what: str) -> None:
        self.console.rule(f"[bold]step {i}/{n}: {name}[/] ({what})", align="left")

    def _done(self, res: StepResult) -> None:
        verb = "[green]done[/]" if res.status == "ran" else "[cyan]unchanged, skipped[/]"
        extra = f" in {res.seconds:.1f} s" if res.status == "ran" else ""
        where = res.artifact or res.dir
        self.console.print(f"  {verb}{extra}: {where}", highlight=False)
        if res.status == "ran" and brief(res.report):
            self.console.print(f"  {brief(res.report)}", highlight=False)
        sys.stdout.flush()


def print_sizing(sizing, console) -> None:
    """The figures resolved from the base and the data, as a table."""
    from rich.table import Table
    b = sizing.base
    console.print(f"base {b['spec']}: {b['params']:,} parameters: embedding "
                  f"{b['embedding_params']:,} ({b['vocab']:,} tokens x {b['hidden']}"
                  f"{'' if b['tied_embeddings'] else ', and an untied head'}), decoder layers "
                  f"{b['decoder_params']:,}", highlight=False, emoji=False)
    for spec, d in sizing.data.items():
        console.print(f"data {spec}: {d['tokens']['train']:,} training + {d['tokens']['val']:,} "
                      f"held-out tokens ({d['records']['train']} + {d['records']['val']} "
                      f"records), {d['tokens_per_char']:.3f} tokens per character",
                      highlight=False, emoji=False)
    if not sizing.options:
        return
    t = Table(title="resolved from the base and the data", title_justify="left")
    for col in ("step", "option", "value", "from"):
        t.add_column(col, justify="right" if col == "value" else "left")
    for o in sizing.options:
        t.add_row(o["step"], o["option"], f"{o['value']:,}", _why(o))
    console.print(t)


def _why(o: dict) -> str:
    r = o["rule"]
    if "decoder_share" in o:
        return (f"keep {r['decoder']:.0%} of {o['decoder_params']:,} decoder parameters "
                f"(of {o['params_in']:,} in)")
    if "coverage" in o:
        return (f"{o['base_tokens']:,} base + {o['domain_tokens_covering']:,} covering "
                f"{r['coverage']:.1%} of the domain text + {r['general']:g}x as many general")
    if "of" in o:
        cap = f", at most {r['max']:,}" if r.get("max") is not None else ""
        floor = f", at least {r['min']:,}" if r.get("min") else ""
        return f"{r['share']:g} x {o['of']:,} {o['split']} {o['unit']}{floor}{cap}"
    return f"power of two in [{r['min']}, {r['max']}] that both splits have room for"


# Figures a step's report may hold, shown as one line when the step finishes.
BRIEF = (("params_before", "params before", "{:,}"), ("params_after", "params after", "{:,}"),
         ("ppl_before", "ppl before", "{:.2f}"), ("ppl_after", "ppl after", "{:.2f}"),
         ("val_ppl_before", "val ppl before", "{:.2f}"), ("val_ppl_after", "val ppl after",
                                                          "{:.2f}"),
         ("val_ppl", "val ppl", "{:.2f}"), ("tokens", "tokens", "{:,}"),
         ("tokens_per_s", "train tok/s", "{:.0f}"), ("bytes_on_disk", "bytes", "{:,}"))


def brief(report: dict | None) -> str:
    """One line of the figures a step reported."""
    if not report:
        return ""
    if "models" in report:                              # an eval step
        return "; ".join(f"{r.get('stage')}: ppl {r.get('ppl', float('nan')):.2f}, "
                         f"{r.get('decode_tok_s', 0):.0f} tok/s" for r in report["models"])
    parts = [f"{label} {fmt.format(report[k])}" for k, label, fmt in BRIEF
             if isinstance(report.get(k), (int, float))]
    return ", ".join(parts)


def _quiet_transformers() -> None:
    """The build shows its own progress; drop transformers' per-load bars."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


# ---------------------------------------------------------------- files

def _artifact_in(d: Path, makes: str | None) -> Path | None:
    if makes in MODEL_KINDS:
        return d
    if makes == "gguf":
        found = sorted(d.glob("*.gguf"))
        return found[0] if found else d / "model.gguf"
    return None


def _prepare_work(work: Path, key: str) -> None:
    """Keep a half-done step's checkpoints only if they were made for this key."""
    work.parent.mkdir(parents=True, exist_ok=True)
    key_file = work.with_name(work.name + ".key")
    partial = work.with_name(work.name + ".partial")
    if key_file.exists() and key_file.read_text() != key:
        shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)        # never reuse a half-written output
    key_file.write_text(key)


def _cleanup_work(work: Path) -> None:
    for p in (work.with_name(work.name + ".partial"), work.with_name(work.name + ".key")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def _write_step(d: Path, res: StepResult) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rec = {"name": res.name, "step": res.step, "status": "done", "key": res.key,
           "artifact": res.artifact, "artifact_hash": res.artifact_hash,
           "seconds": res.seconds, "config": res.config,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (d / STEP_FILE).write_text(json.dumps(rec, indent=2, default=str))


def _read_step(d: Path) -> dict | None:
    rec = _read_json(d / STEP_FILE)
    return rec or None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
