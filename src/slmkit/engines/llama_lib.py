"""llama-cpp-python, imported once with the CPU settings slmkit relies on.

llama.cpp moves some weights into "extra buffer types" at load time (repacked
layouts for the CPU's matrix units). On CPUs with AMX, llama-cpp-python 0.3.36's
AMX path ends in a general-protection fault inside ``ggml_backend_amx_mul_mat``
on the first batch of a prompt, for tiny and real models alike (SmolLM2-135M
Q4_1, Q8_0, Q4_K_M; seen on Sapphire-Rapids-class virtual machines). Where the
CPU reports AMX, models are therefore loaded with ``use_extra_bufts`` off, which
is llama.cpp's ``--no-repack``; elsewhere nothing changes.
``SLMKIT_LLAMA_REPACK=1`` forces it on, ``=0`` forces it off.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU advertises AMX (``amx_tile`` in /proc/cpuinfo's flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return any(line.startswith("flags") and " amx_tile" in line
               for line in cpuinfo.splitlines())


def repack_enabled() -> bool:
    """Whether llama.cpp may repack weights into extra buffer types on this machine."""
    forced = os.environ.get("SLMKIT_LLAMA_REPACK")
    if forced in ("0", "1"):
        return forced == "1"
    return not cpu_has_amx()


@functools.cache
def llama_cpp():
    """The ``llama_cpp`` module, its default model parameters set for this machine.

    Every ``Llama(...)`` and every low-level ``llama_model_default_params()`` call
    made after this sees the setting.
    """
    import llama_cpp as lib
    import llama_cpp.llama_cpp as low

    if not repack_enabled():
        default = low.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params
        lib.llama_model_default_params = params
    return lib
