"""A fast reader of a GGUF file's header: metadata and tensor table, arrays skipped.

``gguf.GGUFReader`` maps every metadata array into numpy, which for a
49,152-token vocabulary takes seconds. Checking a file, or reading a few
scalar keys, needs none of that: this reader walks the header once, keeps
scalars and strings, and records only the type and length of arrays.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


@dataclass
class ArrayInfo:
    """A metadata array that was skipped: its element type and length."""

    type: int
    count: int


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int          # from the start of the data section
    n_bytes: int


@dataclass
class GGUFHeader:
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0

    @property
    def data_end(self) -> int:
        """Where the last tensor's bytes end (the file is at least this long)."""
        return self.data_start + max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Stream:
    def __init__(self, f):
        self.f = f

    def read(self, fmt: str):
        n = struct.calcsize(fmt)
        b = self.f.read(n)
        if len(b) != n:
            raise EOFError("GGUF header ends early")
        return struct.unpack(fmt, b)[0]

    def string(self, keep: bool = True) -> str | None:
        n = self.read("<Q")
        if n > 1 << 32:
            raise ValueError(f"string length {n} is not plausible")
        if not keep:
            self.f.seek(n, 1)
            return None
        b = self.f.read(n)
        if len(b) != n:
            raise EOFError("GGUF header ends early")
        return b.decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.read(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.read("<I"), self.read("<Q")
            if etype in _SCALAR:
                self.f.seek(struct.calcsize(_SCALAR[etype]) * count, 1)
            elif etype == _STRING:
                for _ in range(count):
                    self.string(keep=False)
            else:                                   # nested arrays: walk them
                for _ in range(count):
                    self.value(etype)
            return ArrayInfo(etype, count)
        raise ValueError(f"unknown GGUF value type {vtype}")


def _tensor_bytes(shape: tuple[int, ...], ttype: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def type_name(ttype: int) -> str:
    """The GGML name of tensor type ``ttype`` (``Q4_0``, ``F16``, ...)."""
    from gguf import GGMLQuantizationType
    return GGMLQuantizationType(ttype).name


def read_header(path: str | Path) -> GGUFHeader:
    """Metadata (arrays as ``ArrayInfo``) and the tensor table of a GGUF file.

    Raises:
        ValueError, EOFError: the file is not GGUF or its header is cut short.
    """
    with open(path, "rb") as raw:
        s = _Stream(raw)
        if raw.read(4) != b"GGUF":
            raise ValueError("bad magic bytes")
        h = GGUFHeader(version=s.read("<I"))
        if h.version < 2:
            raise ValueError(f"GGUF version {h.version} is too old")
        n_tensors, n_kv = s.read("<Q"), s.read("<Q")
        for _ in range(n_kv):
            key = s.string()
            h.metadata[key] = s.value(s.read("<I"))
        for _ in range(n_tensors):
            name = s.string()
            dims = tuple(s.read("<Q") for _ in range(s.read("<I")))
            ttype, offset = s.read("<I"), s.read("<Q")
            h.tensors.append(TensorInfo(name, dims, ttype, offset, _tensor_bytes(dims, ttype)))
        align = h.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        pos = raw.tell()
        h.data_start = pos + (-pos) % align
    return h
