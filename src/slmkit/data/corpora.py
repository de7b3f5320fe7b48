"""Built-in corpora that every machine has, with no download.

- ``python-docs``: Python's own reference documentation (``pydoc_data.topics``),
  cut into sections. The domain text of the default recipe.
- ``wordnet-glosses``: English definitions and usage examples from WordNet
  (Debian's ``wordnet-base``), a stand-in for general, non-technical text.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import SlmError

WORDNET_DIR = Path("/usr/share/wordnet")


def python_docs() -> list[dict]:
    """One record per section (between headings) of each pydoc topic."""
    from pydoc_data.topics import topics
    records = []
    for name in sorted(topics):
        for i, chunk in enumerate(_chunks(topics[name])):
            records.append({"text": chunk, "id": f"{name}#{i}"})
    return records


def _chunks(text: str, target: int = 1500) -> list[str]:
    """Paragraph groups of about ``target`` characters."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text.strip()):
        if cur and len(cur) + len(para) > target:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


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


CORPORA = {"python-docs": python_docs, "wordnet-glosses": wordnet_glosses}
