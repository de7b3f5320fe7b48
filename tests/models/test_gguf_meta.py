"""The fast GGUF header reader agrees with gguf-py and catches cut files."""
import gguf
import pytest

from slmkit.errors import SlmError
from slmkit.export import ExportConfig, run_export
from slmkit.models.gguf_meta import ArrayInfo, read_header
from slmkit.models.io import check_gguf
from slmkit.models.tiny import tiny_slm


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "m.gguf"
    run_export(tiny_slm("llama"), path, ExportConfig(type="q8_0", parity_tokens=0))
    return path


def test_header_matches_gguf_reader(gguf_file):
    h = read_header(gguf_file)
    r = gguf.GGUFReader(str(gguf_file))
    assert [t.name for t in h.tensors] == [t.name for t in r.tensors]
    for a, b in zip(h.tensors, r.tensors):
        assert a.type == int(b.tensor_type)
        assert list(a.shape) == [int(x) for x in b.shape]
        assert h.data_start + a.offset == int(b.data_offset)
        assert a.n_bytes == int(b.n_bytes)
    assert h.data_end == gguf_file.stat().st_size
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        v = h.metadata[key]
        if isinstance(v, ArrayInfo):
            assert v.count == len(f.data)
        else:
            assert v == pytest.approx(f.contents())
    assert h.metadata["general.architecture"] == "llama"


def test_cut_file_is_refused(gguf_file, tmp_path):
    data = gguf_file.read_bytes()
    for n, needle in ((len(data) - 100, "truncated"), (200, "corrupt or truncated")):
        cut = tmp_path / f"cut{n}.gguf"
        cut.write_bytes(data[:n])
        with pytest.raises(SlmError, match=needle):
            check_gguf(cut)
    check_gguf(gguf_file)
