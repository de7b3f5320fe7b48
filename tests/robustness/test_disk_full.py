"""A full disk while a checkpoint is written: the previous checkpoint stays whole, nothing
half-written is left, and the error says what happened and how to go on."""
import errno
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.outputs import atomic_write_text, clean_stale, temp_path
from slmkit.tune.checkpoint import checkpoint_dirs, save_checkpoint


def _state(step: int) -> dict:
    return {"step": step, "position": step, "tokens": 64 * step, "py_rng": [3, [], None]}


def _hashes(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _save(work, step, params):
    opt = torch.optim.AdamW(params.values(), lr=1e-3)
    return save_checkpoint(work, params, opt.state_dict(), _state(step),
                           [{"torch": torch.get_rng_state()}])


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    params = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    first = _save(tmp_path, 1, params)
    before = _hashes(first)

    import slmkit.tune.checkpoint as st

    def full(tensors, filename, *a, **k):           # writes a little, then the disk is full
        with open(filename, "wb") as f:
            f.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(SlmError) as exc:
        _save(tmp_path, 2, params)
    msg = exc.value.one_line()
    assert "no space left" in msg and "step-0000002" in msg and "step-0000001" in msg
    assert "intact" in msg and "resume" in msg
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step-0000001"]
    assert _hashes(first) == before
    assert sorted(p.name for p in first.parent.iterdir()) == ["step-0000001"]   # no temp left


def test_other_write_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    import slmkit.tune.checkpoint as st

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(st, "save_file", denied)
    with pytest.raises(PermissionError):
        _save(tmp_path, 1, {"w": torch.zeros(2)})
    assert not any((tmp_path / "checkpoints").iterdir())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_run_s_temporaries_are_cleaned_next_time(tmp_path):
    params = {"w": torch.randn(4, 4)}
    root = tmp_path / "checkpoints"
    root.mkdir()
    dead = _dead_pid()
    stale = root / f".step-0000001.tmp-{dead}"
    stale.mkdir()
    (stale / "params.safetensors").write_bytes(b"half")
    live = root / f".step-0000001.tmp-{os.getppid()}"    # a process still running: kept
    live.mkdir()
    _save(tmp_path, 1, params)
    assert not stale.exists() and live.exists()
    out = tmp_path / "s3.jsonl"
    left = out.with_name(f".{out.name}.tmp-{dead}")
    left.write_text("half a file")
    assert clean_stale(out) == [left] and not left.exists()
    atomic_write_text(out, "ok\n")
    assert out.read_text() == "ok\n" and not temp_path(out).exists()


def test_sigterm_removes_the_temporary_file(tmp_path):
    """A writer interrupted by SIGTERM (``kill``) under ``slm`` unwinds and removes its temp."""
    script = tmp_path / "w.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from slmkit.outputs import atomic_path, exit_cleanly_on_sigterm\n"
        "exit_cleanly_on_sigterm()\n"
        f"with atomic_path({str(tmp_path / 'out.jsonl')!r}) as tmp:\n"
        "    tmp.write_text('partial')\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    tmp = p.stdout.readline().strip()
    assert os.path.exists(tmp)
    p.terminate()
    assert p.wait(30) == 128 + 15
    assert not os.path.exists(tmp) and not (tmp_path / "out.jsonl").exists()
