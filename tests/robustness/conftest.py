"""Shared pieces of the robustness suite: an in-process ``slm`` runner, a tiny model and a
workspace of good and bad inputs whose every byte is checked before and after a command."""
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import slmkit
from slmkit.models.tiny import tiny_slm


@dataclass
class Result:
    code: int
    out: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.startswith("error:")]


@pytest.fixture
def run_slm(capsys):
    """Run ``slm ARGS`` in this process; returns its exit code and all it printed."""
    from slmkit.cli import main
    from slmkit.cli.app import state

    def run(*argv) -> Result:
        capsys.readouterr()
        state["debug"] = False
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        cap = capsys.readouterr()
        return Result(code, cap.out + cap.err)
    return run


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with a hash of its bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Llama-family model directory (2 layers, hidden 64)."""
    return slmkit.save(tiny_slm("llama"), tmp_path_factory.mktemp("models") / "tiny")


def make_workspace(root: Path, tiny: Path) -> Path:
    """Good and bad inputs in ``root``; paths in the tables are relative to it."""
    import shutil
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny, root / "model")
    text = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n\n" * 40
    (root / "doc.md").write_text(text)
    (root / "notes.jsonl").write_text('{"text": "one line of notes about lists", "id": 7}\n')
    (root / "prompts.txt").write_text("lists\ndicts\n")
    (root / "empty.txt").write_text("")
    (root / "blank.jsonl").write_text("\n\n   \n")
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{"text": 5}\n')
    (root / "cut.jsonl").write_text('{"text": "fine"}\n{"text": "cut off mid-wr')
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (root / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (root / "data.csv").write_text("a,b\n1,2\n")
    (root / "nodata").mkdir()
    (root / "nodata" / "notes.xyz").write_text("not data\n")
    (root / "recipe.yaml").write_text("name: x\nbase: tiny:llama\ndata: python-docs\n"
                                      "steps: [{step: prune, method: width, target: 2.0}]\n")
    (root / "no-weights.yaml").write_text("name: y\nbase: smollm2-360m\ndata: python-docs\n"
                                          "steps: [{step: prune, method: width, target: 0.5}]\n")
    broken = root / "broken"
    shutil.copytree(tiny, broken)
    (broken / "model.safetensors").write_bytes(b"garbage" * 10)
    half = root / "half"
    shutil.copytree(tiny, half)
    w = (half / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(w[: len(w) // 2])     # truncated mid-write
    (root / "noconfig").mkdir()
    (root / "fake.gguf").write_bytes(b"GGUF" + b"\0" * 12)
    return root


@pytest.fixture
def workspace(tmp_path, tiny_dir):
    return make_workspace(tmp_path / "ws", tiny_dir)
