"""Run ``slm ARGS`` and SIGKILL it at one point: ``python kill_run.py RULE ARGS...``.

RULE is one of
    step=N       inside the N-th optimizer step of the process (its gradients computed,
                 the weights not yet updated)
    ckpt=N       inside the N-th checkpoint write (the parameters are in the checkpoint's
                 temporary directory, the optimizer state and state.json are not)
    save=TEXT    inside the first weights file written outside ``checkpoints/`` whose
                 path contains TEXT (the final save of a model)
    none         no kill (the same process, run to the end)

The kill is a real ``SIGKILL`` of this process: no ``finally``, no ``atexit``, no signal
handler runs, as when the machine loses power or the OOM killer strikes. Before dying it
prints one ``killed: ...`` line on stderr, so a test can tell that the rule fired.
"""
import os
import signal
import sys
from pathlib import Path


def _die(where: str) -> None:
    sys.stderr.write(f"killed: {where}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_in_optimizer_step(n: int) -> None:
    import torch
    real, calls = torch.optim.AdamW.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            _die(f"optimizer step {n}")
        return real(self, *args, **kwargs)
    torch.optim.AdamW.step = step


def _kill_in_checkpoint(n: int) -> None:
    import torch
    real, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        if Path(str(f)).name == "trainer.pt":
            calls[0] += 1
            if calls[0] == n:
                _die(f"checkpoint write {n} ({Path(str(f)).parent.name})")
        return real(obj, f, *args, **kwargs)
    torch.save = save


def _kill_in_save(text: str) -> None:
    # Patched before transformers and PEFT import it (they bind the name at import).
    import safetensors.torch as st
    real = st.save_file

    def save_file(tensors, filename, *args, **kwargs):
        path = str(filename)
        if text in path and "checkpoints" not in Path(path).parts:
            real(tensors, filename, *args, **kwargs)      # the file is written, the rest not
            _die(f"final save ({path})")
        return real(tensors, filename, *args, **kwargs)
    st.save_file = save_file


def main() -> None:
    rule, argv = sys.argv[1], sys.argv[2:]
    kind, _, arg = rule.partition("=")
    if kind == "step":
        _kill_in_optimizer_step(int(arg))
    elif kind == "ckpt":
        _kill_in_checkpoint(int(arg))
    elif kind == "save":
        _kill_in_save(arg)
    elif kind != "none":
        raise SystemExit(f"unknown rule {rule}")
    from slmkit.cli import main as slm
    slm(argv)


if __name__ == "__main__":
    main()
