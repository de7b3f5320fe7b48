"""Readers for the files users have, and what each does with bad input."""
import json
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slmkit import data
from slmkit.data import readers
from slmkit.errors import SlmError

HANGUL = "한국어 문서"                      # NFC: one code point per syllable
BINARY = bytes(range(256)) * 4
LATIN1 = "café résumé naïve\n".encode("latin-1")


def test_html_drops_scripts_styles_and_navigation(tmp_path):
    f = tmp_path / "page.html"
    f.write_text("""<!DOCTYPE html><html><head><title>T</title><style>p {color: red}</style>
<script>var x = "<p>not text</p>";</script></head><body>
<header><a href="/">Home</a> | <a href="/docs">Docs</a></header>
<nav><ul><li>Menu item</li></ul></nav>
<h1>Install &amp; run</h1><p>First   paragraph
with a <b>bold</b> word.</p><noscript>enable js</noscript>
<div>Second<br>line</div><pre>  code  keeps   spaces</pre>
<aside>sidebar</aside><footer>copyright</footer></body></html>""")
    assert readers.html(f) == ("Install & run\nFirst paragraph with a bold word.\nSecond\nline\n"
                               "code  keeps   spaces")


def test_html_declared_charset_is_honoured(tmp_path):
    f = tmp_path / "legacy.htm"
    f.write_bytes('<html><head><meta charset="euc-kr"></head><body><p>한국어</p></body>'
                  '</html>'.encode("euc-kr"))
    assert readers.html(f) == "한국어"


def test_rst_drops_markup(tmp_path):
    f = tmp_path / "guide.rst"
    f.write_text("Title\n=====\n\n.. _target:\n\nSee :func:`len` and `the docs <https://x>`_.\n\n"
                 ".. note::\n\n   Kept ``inline`` content.\n")
    text = readers.rst(f)
    assert text.split() == ["Title", "See", "len", "and", "the", "docs.", "Kept", "inline",
                            "content."]


def test_text_is_nfc_on_every_reader(tmp_path):
    nfd = unicodedata.normalize("NFD", HANGUL)
    assert len(nfd) > len(HANGUL)
    (tmp_path / "a.txt").write_text(nfd)
    (tmp_path / "b.md").write_text(nfd)
    (tmp_path / "c.html").write_text(f"<p>{nfd}</p>")
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": nfd, "response": nfd}) + "\n")
    (tmp_path / "e.csv").write_text(f"text\n{nfd}\n")
    pq.write_table(pa.table({"text": [nfd]}), tmp_path / "f.parquet")
    recs = data.read_records(tmp_path)
    assert len(recs) == 6
    for r in recs:
        assert data.record_text(r).split("\n")[0] == HANGUL


def test_csv_and_parquet_take_a_named_column(tmp_path):
    (tmp_path / "rows.csv").write_text('id,body\n1,"first, with a comma"\n2,\n3,third\n')
    recs = data.read_records(tmp_path / "rows.csv", text_field="body")
    assert [r["text"] for r in recs] == ["first, with a comma", "third"]
    assert data.read_records(f"{tmp_path / 'rows.csv'}#body") == recs
    pq.write_table(pa.table({"body": ["x y", None, "z"], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    assert [r["text"] for r in data.read_records(tmp_path / "t.parquet", "body")] == ["x y", "z"]
    (tmp_path / "k.jsonl").write_text('{"content": "from a key"}\n')
    assert data.read_records(f"{tmp_path / 'k.jsonl'}#content")[0]["text"] == "from a key"


def test_mixed_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Notes\n\nmarkdown text")
    (tmp_path / "sub" / "b.html").write_text("<p>html text</p>")
    (tmp_path / "sub" / "c.rst").write_text("rst text\n========\n")
    (tmp_path / "d.csv").write_text("text\ncsv row one\ncsv row two\n")
    (tmp_path / "image.png").write_bytes(BINARY)          # not a data suffix: ignored
    texts = sorted(data.record_text(r) for r in data.read_records(tmp_path))
    assert texts == ["# Notes\n\nmarkdown text", "csv row one", "csv row two", "html text",
                     "rst text"]


@pytest.mark.parametrize("suffix", [".txt", ".md", ".rst", ".html", ".htm", ".jsonl", ".csv"])
def test_binary_file_is_one_line_error(tmp_path, suffix):
    f = tmp_path / f"bad{suffix}"
    f.write_bytes(BINARY)
    with pytest.raises(SlmError, match=r"bad\.\w+: looks like a binary file") as e:
        data.read_records(f)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("suffix", [".txt", ".md", ".rst", ".html", ".jsonl", ".csv"])
def test_wrong_encoding_is_one_line_error(tmp_path, suffix):
    f = tmp_path / f"latin{suffix}"
    f.write_bytes(LATIN1)
    with pytest.raises(SlmError, match=r"not UTF-8 text \(byte 0xe9 at offset 3\).*iconv"):
        data.read_records(f)


def test_parquet_bad_input(tmp_path):
    f = tmp_path / "bad.parquet"
    f.write_bytes(BINARY)
    with pytest.raises(SlmError, match="not a readable Parquet file"):
        data.read_records(f)
    pq.write_table(pa.table({"body": ["", "  ", None]}), tmp_path / "empty.parquet")
    with pytest.raises(SlmError, match="column 'body' is empty"):
        data.read_records(tmp_path / "empty.parquet", "body")
    with pytest.raises(SlmError, match=r"no column 'text' \(columns: body\).*--text-field"):
        data.read_records(tmp_path / "empty.parquet")
    pq.write_table(pa.table({"n": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(SlmError, match="column 'n' holds int64 values, not text"):
        data.read_records(tmp_path / "ints.parquet", "n")


def test_csv_empty_or_missing_column(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("title,body\na,\nb,   \n")
    with pytest.raises(SlmError, match="t.csv: column 'body' is empty"):
        data.read_records(f, "body")
    with pytest.raises(SlmError, match=r"no column 'text' \(columns: title, body\)"):
        data.read_records(f)


def test_jsonl_missing_text_field(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"content": "a"}\n{"other": "b"}\n')
    with pytest.raises(SlmError, match=r"r.jsonl:2: no text under 'content'"):
        data.read_records(f, "content")


def test_unknown_suffix_and_empty_directory(tmp_path):
    f = tmp_path / "doc.pdf"
    f.write_bytes(b"%PDF-1.4")
    with pytest.raises(SlmError, match=r"unsupported file type '\.pdf'"):
        data.read_records(f)
    with pytest.raises(SlmError, match="no data files in"):
        data.read_records(tmp_path)
