"""Built-in corpora that every machine has, with no download.

- ``python-docs``: Python's own reference documentation (``pydoc_data.topics``),
  one document per topic. The domain text of the default recipe.
- ``wordnet-glosses``: English definitions and usage examples from WordNet
  (Debian's ``wordnet-base``), a stand-in for general, non-technical text. The
  glosses are unrelated sentences, with no document of their own: a record holds
  ``per_record`` of them in WordNet's order, like a page of a glossary.
- ``ko-libreoffice-help``: the Korean help of LibreOffice (Debian's
  ``libreoffice-help-ko``, MPL-2.0), one record per help page: about 700k
  characters of technical-manual prose once tags, scripts, navigation, lines that
  are mostly untranslated English and repeated lines are dropped.
- ``ko-law``: the Korean constitution and ten National Assembly bills shipped in
  the KoNLPy wheel (``konlpy/data/corpus/{kolaw,kobill}``, about 65k characters),
  one record per text: Korean of another register, for general-language checks.

The Korean corpora are fetched once by ``make corpora`` into
``$SLMKIT_CACHE/corpora`` (default ``~/.cache/slmkit/corpora``) and read offline
from there.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import SlmError
from ..outputs import atomic_write_text
from ..paths import cache_dir
from .readers import html, nfc, read_text

WORDNET_DIR = Path("/usr/share/wordnet")
HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e]")
LATIN = re.compile(r"[A-Za-z]")


def python_docs() -> list[dict]:
    """One record per pydoc topic (a section of the language reference), as written."""
    from pydoc_data.topics import topics
    return [{"text": topics[name].strip(), "id": name} for name in sorted(topics)
            if topics[name].strip()]


def wordnet_glosses(per_record: int = 20) -> list[dict]:
    """Glosses of WordNet synsets, ``per_record`` sentences to a record."""
    files = [WORDNET_DIR / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.exists() for f in files):
        raise SlmError("WordNet is not installed (needed for the 'wordnet-glosses' corpus)",
                       "`apt-get install wordnet-base` (or `make sysdeps`)")
    sentences = []
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(" ") or "|" not in line:
                continue
            gloss = line.split("|", 1)[1].strip()
            for part in gloss.split(";"):
                part = part.strip().strip('"').strip()
                if len(part) > 20:
                    sentences.append(part[0].upper() + part[1:].rstrip(".") + ".")
    return [{"text": " ".join(sentences[i:i + per_record]), "id": f"wordnet#{i // per_record}"}
            for i in range(0, len(sentences), per_record)]


def corpus_dir(name: str) -> Path:
    """Where ``make corpora`` unpacked corpus ``name`` (it must be there)."""
    d = cache_dir() / "corpora" / name
    if not (d / ".done").exists():
        raise SlmError(f"the '{name}' files are not on this machine (looked in {d})",
                       "run `make corpora` once (it downloads them; SLMKIT_CACHE must be the "
                       "same then and now)")
    return d


def mostly_korean(line: str) -> bool:
    """At least as many Hangul characters as Latin letters (and some Hangul)."""
    h = len(HANGUL.findall(line))
    return h > 0 and h >= len(LATIN.findall(line))


HELP_VERSION = 1      # bump when the extraction below changes (it is cached on disk)


def ko_libreoffice_help() -> list[dict]:
    """One record per Korean LibreOffice help page: its Korean lines, each line of the
    corpus kept once (navigation snippets recur on hundreds of pages)."""
    d = corpus_dir("libreoffice-help-ko")
    cached = d / f"records-v{HELP_VERSION}.jsonl"
    if cached.exists():
        return [json.loads(line) for line in read_text(cached).splitlines()]
    seen: set[str] = set()
    records = []
    for f in sorted((d / "text").rglob("*.html")):
        lines = []
        for line in html(f).splitlines():
            if mostly_korean(line) and line not in seen:
                seen.add(line)
                lines.append(line)
        if lines:
            records.append({"text": "\n".join(lines), "id": str(f.relative_to(d / "text"))})
    atomic_write_text(cached, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


def ko_law() -> list[dict]:
    """The constitution of the Republic of Korea and ten bills, one record each (page
    number lines such as ``- 1 -`` dropped)."""
    d = corpus_dir("konlpy")
    records = []
    for f in sorted(d.glob("ko*/*.txt")):
        text = "\n".join(line for line in read_text(f).splitlines()
                         if not re.fullmatch(r"\s*-\s*\d+\s*-\s*", line))
        records.append({"text": nfc(text.strip()), "id": f"{f.parent.name}/{f.name}"})
    return records


CORPORA = {"python-docs": python_docs, "wordnet-glosses": wordnet_glosses,
           "ko-libreoffice-help": ko_libreoffice_help, "ko-law": ko_law}
