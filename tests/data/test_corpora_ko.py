"""The Korean corpora (fetched by `make corpora`) and what a tokenizer spends on them."""
import re
import unicodedata

import pytest

from slmkit import data
from slmkit.data.corpora import HANGUL, LATIN
from slmkit.engines import open_engine
from slmkit.errors import SlmError
from slmkit.evaluate import tokens_per_char
from slmkit.models.tiny import tiny_slm


def test_libreoffice_help_is_korean_prose():
    recs = data.read_records("ko-libreoffice-help")
    text = "\n".join(r["text"] for r in recs)
    assert 1500 < len(recs) < 2500 and 600_000 < len(text) < 800_000
    lines = text.splitlines()
    assert len(set(lines)) == len(lines)                       # boilerplate kept once
    assert all(len(HANGUL.findall(ln)) >= len(LATIN.findall(ln)) for ln in lines)
    assert not re.search(r"<(p|div|span|a)\b|setupModules|\.js\b", text)   # no tags, scripts
    assert "Help content debug info" not in text and "Search in all modules" not in text
    assert unicodedata.is_normalized("NFC", text)
    assert "LibreOffice" in text and "대화 상자" in text


def test_ko_law_constitution_and_bills():
    recs = data.read_records("ko-law")
    ids = [r["id"] for r in recs]
    assert "kolaw/constitution.txt" in ids and sum(i.startswith("kobill/") for i in ids) == 10
    text = "".join(r["text"] for r in recs)
    assert 55_000 < len(text) < 75_000 and "대한민국" in text
    assert not re.search(r"^\s*- \d+ -\s*$", text, re.M)       # page numbers dropped
    train, val = data.split(recs, 0.1)
    assert train and val


def test_missing_corpus_names_make(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    with pytest.raises(SlmError, match=r"'libreoffice-help-ko' files are not on this machine.*"
                                       r"`make corpora`"):
        data.read_records("ko-libreoffice-help")


def test_tokens_per_char_of_a_byte_level_tokenizer(tmp_path):
    """The tiny model's byte-level BPE was trained on English: a Hangul syllable is three
    UTF-8 bytes and no merge joins them, so it costs three tokens (NFD would cost more)."""
    engine = open_engine(tiny_slm("llama", seed=0))
    (tmp_path / "syllables.txt").write_text(unicodedata.normalize("NFD", "대한민국헌법" * 50))
    assert tokens_per_char(engine, str(tmp_path), "all") == 3.0
    ko = tokens_per_char(engine, "ko-law", "all", max_chars=5000)
    en = tokens_per_char(engine, "python-docs", "all", max_chars=5000)
    assert 1.5 < ko < 3.0 and en < 0.6
