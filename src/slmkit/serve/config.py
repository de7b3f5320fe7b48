"""Settings of one ``slm serve`` process, and the bind-address safety rule."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..device import Device
from ..engines import ENGINES
from ..errors import SlmError


class ServeConfig(BaseModel):
    """What ``slm serve`` runs with; CLI flags map one to one onto these fields.

    Attributes:
        model: a model spec (built-in name, HF directory, ``.gguf`` file).
        host: address to bind; loopback unless an API key is set.
        port: TCP port (0 picks a free one).
        api_key: bearer key clients must send; defaults to ``$SLM_API_KEY``.
        engine: ``auto`` (llama.cpp for .gguf, else pytorch), ``pytorch``, ``llama.cpp``.
        max_concurrency: slots: sequences decoded together in one batch (None: sized
            from memory, see ``serve.sizing``).
        max_queue: requests allowed to wait for a slot; beyond that, 429.
        ctx: context length per slot in tokens, prompt + completion (None: 2048,
            less if memory is short, capped at the model's training context).
        step_tokens: most tokens one decode step reads: one per generating sequence,
            the rest chunks of prompts being read.
        max_tokens: the most tokens one request may ask for.
        max_body_bytes: largest request body accepted (413 beyond).
        shutdown_timeout_s: how long in-flight requests may run on after a stop signal.
        name: model id clients use; defaults to the model's name.
        n_threads: CPU threads for llama.cpp (default: all cores).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    adapter: str | None = None             # applied to the model unmerged (slmkit.load)
    model: str
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(default_factory=lambda: os.environ.get("SLM_API_KEY") or None,
                                repr=False)
    engine: str = "auto"
    max_concurrency: int | None = Field(None, ge=1, le=256)
    max_queue: int = Field(16, ge=0, le=4096)
    ctx: int | None = Field(None, ge=16)
    step_tokens: int = Field(256, ge=16, le=8192)
    max_tokens: int = Field(1024, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    name: str | None = None
    n_threads: int | None = Field(None, ge=1)

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        return v

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return v or None

    def model_id(self) -> str:
        """The id clients put in ``model``: ``name``, else the spec's last path part."""
        if self.name:
            return self.name
        p = Path(self.model)
        return p.stem if p.suffix == ".gguf" else (p.name or self.model)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; names other than localhost count as public."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key.

    Raises:
        SlmError: ``host`` is not loopback and no key is set.
    """
    if not is_loopback(host) and not api_key:
        raise SlmError(f"refusing to serve on '{host}' without an API key: anyone who can reach "
                       "this address could use the model",
                       "pass --api-key KEY (or set SLM_API_KEY), or bind to 127.0.0.1")
