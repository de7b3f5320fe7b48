"""--device: one spelling, checked before any model loads; auto is the CPU without CUDA."""
import subprocess
import sys

import pytest
import torch

import slmkit
from slmkit.device import check_device, resolve_device, to_device
from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_slm

NO_CUDA = not torch.cuda.is_available()


def test_spellings():
    assert check_device("cpu") == "cpu"
    assert check_device(" CPU ") == "cpu"
    assert check_device("Auto") == "auto"
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", ""):
        with pytest.raises(SlmError, match="--device"):
            check_device(bad)


@pytest.mark.skipif(not NO_CUDA, reason="the machine has CUDA")
def test_cuda_refused_without_gpu():
    with pytest.raises(SlmError, match="no CUDA GPU"):
        check_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_to_device_keeps_non_tensors():
    b = {"input_ids": torch.ones(2, 3, dtype=torch.long), "name": "x"}
    assert to_device(b, torch.device("cpu")) is b


def test_load_and_engine_on_cpu(tmp_path):
    from slmkit.engines import open_engine
    d = slmkit.save(tiny_slm("llama"), tmp_path / "m")
    slm = slmkit.load(d, device="cpu")
    assert next(slm.model.parameters()).device.type == "cpu"
    eng = open_engine(str(d), "pytorch", device="auto")
    assert eng.device == resolve_device("auto")
    assert eng.logits(eng.tokenize("hello world")).device.type == "cpu"


VERBS = ["eval", "generate", "chat", "finetune", "prune", "distill", "synth", "quantize",
         "export", "serve", "build"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_device(verb):
    import typer

    from slmkit.cli import _register
    from slmkit.cli.app import app
    _register()
    cmd = typer.main.get_command(app).commands[verb]
    opt = next(p for p in cmd.params if "--device" in p.opts)
    assert opt.default == "auto"


def test_bad_device_is_one_line_before_loading(tmp_path):
    r = subprocess.run([sys.executable, "-m", "slmkit", "generate", str(tmp_path / "nope"), "hi",
                        "--device", "gpu"], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "--device 'gpu'" in lines[0], out      # not "not found"
