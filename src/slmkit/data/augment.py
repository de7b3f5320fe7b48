"""Easy Data Augmentation (EDA) for domain text.

EDA (Wei & Zou, 2019, "EDA: Easy Data Augmentation Techniques for Boosting
Performance on Text Classification Tasks") makes K noisy copies of each
example with one of four word-level operations, each touching about
``alpha * n_words`` words:

- **SR** synonym replacement: replace words (not stop words) by a WordNet synonym;
- **RI** random insertion: insert a synonym of a random word at a random place;
- **RS** random swap: swap two random words;
- **RD** random deletion: delete each word with probability ``alpha``.

Domain text is not plain prose, so only *editable words* take part: plain
alphabetic words in prose. Code (fenced or indented blocks, lines that look
like code, inline backtick spans), URLs, numbers and identifiers such as
``os.path`` or ``__init__`` are never changed, moved or deleted. Synonyms come
from WordNet as installed by Debian's ``wordnet-base`` (``index.*`` and
``data.*`` under ``/usr/share/wordnet``), read directly with no download.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import SlmError
from ..outputs import atomic_write_text
from . import iter_jsonl, read_records, validate_record
from .corpora import WORDNET_DIR

OPS = ("sr", "ri", "rs", "rd")
POS = ("noun", "verb", "adj", "adv")

# Function words that EDA leaves alone for SR and RI (a short English list).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves also may might must shall
""".split())


# ---------------------------------------------------------------- WordNet

class WordNet:
    """Synonym lookup over WordNet's own database files (no nltk needed).

    ``index.<pos>`` lines are ``lemma pos n_synsets n_ptrs [ptrs] n_senses n_tagged offsets...``;
    each offset is the byte position of a synset line in ``data.<pos>``, whose
    fields are ``offset lex_filenum ss_type w_cnt(hex) word lex_id word lex_id ...``.

    Args:
        root: directory holding ``index.noun``, ``data.noun`` and the rest.
    """

    def __init__(self, root: Path = WORDNET_DIR):
        self.root = Path(root)
        missing = [p for pos in POS for p in (self.root / f"index.{pos}", self.root / f"data.{pos}")
                   if not p.exists()]
        if missing:
            raise SlmError(f"WordNet files missing ({missing[0]}), needed for synonym replacement",
                           "`apt-get install wordnet-base` (or `make sysdeps`)")
        self._index = {pos: self._read_index(pos) for pos in POS}
        self._cache: dict[str, tuple[str, ...]] = {}

    def _read_index(self, pos: str) -> dict[str, tuple[int, ...]]:
        out = {}
        for line in (self.root / f"index.{pos}").read_text(errors="replace").splitlines():
            if line.startswith(" "):        # licence header
                continue
            f = line.split()
            n_synsets, n_ptrs = int(f[2]), int(f[3])
            out[f[0]] = tuple(int(x) for x in f[6 + n_ptrs: 6 + n_ptrs + n_synsets])
        return out

    def _synset_words(self, pos: str, offset: int) -> list[str]:
        with open(self.root / f"data.{pos}", "rb") as fh:
            fh.seek(offset)
            f = fh.readline().decode("utf-8", "replace").split()
        n_words = int(f[3], 16)
        return [f[4 + 2 * i] for i in range(n_words)]

    def synonyms(self, word: str) -> tuple[str, ...]:
        """Single- or multi-word synonyms of ``word`` (lower case, sorted, word excluded)."""
        key = word.lower()
        if key not in self._cache:
            found = set()
            for pos in POS:
                for off in self._index[pos].get(key, ()):
                    for w in self._synset_words(pos, off):
                        # lower-case lemmas only: capitalised ones are names (Trygve_Lie)
                        w = re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")
                        if w != key and re.fullmatch(r"[a-z][a-z' -]*", w):
                            found.add(w)
            self._cache[key] = tuple(sorted(found))
        return self._cache[key]


@lru_cache(maxsize=1)
def wordnet() -> WordNet:
    """The shared WordNet reader (index files parsed once, ~1 s)."""
    return WordNet()


# ---------------------------------------------------------------- tokens

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_LINE = re.compile(
    r"^(\s{4,}|\t)\S|^\s*(>>>|\.\.\.\s|\$ |#!|def |class |import |from \S+ import|return\b|"
    r"@\w|[\w.\[\]]+\s*[+\-*/]?=\s*\S|[\w.]+\(.*\)\s*$)")
_SYMBOLS = set("{}[]()=;<>_*#@\\|/%&^~")
# One prose token: an inline code span, a URL, a run of spaces, or a non-space run.
_TOKEN = re.compile(r"`+[^`\n]+?`+|(?:https?|ftp)://\S+|www\.\S+|[ \t]+|\S+")
_WORD = re.compile(r"^([\"'(\[]*)([A-Za-z]+(?:['-][A-Za-z]+)*)([\"')\],.;:!?]*)$")


def looks_like_code(line: str) -> bool:
    """True for indented code, shell/REPL lines, statements, and symbol-dense lines."""
    if _CODE_LINE.search(line):
        return True
    chars = [c for c in line if not c.isspace()]
    n_sym = sum(c in _SYMBOLS for c in chars)
    return n_sym >= 3 and n_sym > 0.15 * len(chars)


@dataclass
class Tok:
    """One token of a text: ``pre + core + post``; editable tokens have a word ``core``."""

    text: str
    editable: bool = False
    pre: str = ""
    core: str = ""
    post: str = ""

    def render(self) -> str:
        return self.pre + self.core + self.post if self.editable else self.text


def tokenize(text: str) -> list[Tok]:
    """Split ``text`` into tokens; only plain words in prose lines are editable."""
    out: list[Tok] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
            out.append(Tok(line))
            continue
        if fenced or looks_like_code(line):
            out.append(Tok(line))
            continue
        body, nl = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        for m in _TOKEN.finditer(body):
            w = _WORD.match(m.group())
            out.append(Tok(m.group(), True, *w.groups()) if w else Tok(m.group()))
        if nl:
            out.append(Tok(nl))
    return out


def detokenize(toks: list[Tok]) -> str:
    return "".join(t.render() for t in toks)


# ---------------------------------------------------------------- operations

def _match_case(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def _candidates(toks: list[Tok], wn: WordNet) -> list[int]:
    return [i for i, t in enumerate(toks) if t.editable and t.core.lower() not in STOP_WORDS
            and wn.synonyms(t.core)]


def synonym_replacement(toks: list[Tok], n: int, rng: random.Random, wn: WordNet) -> int:
    """Replace up to ``n`` distinct non-stop words by a random synonym; returns the count."""
    idx = _candidates(toks, wn)
    rng.shuffle(idx)
    for i in idx[:n]:
        toks[i].core = _match_case(rng.choice(wn.synonyms(toks[i].core)), toks[i].core)
    return min(n, len(idx))


def random_insertion(toks: list[Tok], n: int, rng: random.Random, wn: WordNet) -> int:
    """Insert ``n`` synonyms of random non-stop words before random words; returns the count."""
    done = 0
    for _ in range(n):
        src = _candidates(toks, wn)
        words = [i for i, t in enumerate(toks) if t.editable]
        if not src or not words:
            break
        syn = rng.choice(wn.synonyms(toks[rng.choice(src)].core))
        at = rng.choice(words)
        toks[at:at] = [Tok(syn, True, "", syn, ""), Tok(" ")]
        done += 1
    return done


def random_swap(toks: list[Tok], n: int, rng: random.Random) -> int:
    """Swap the words of ``n`` random pairs of editable tokens (punctuation stays put)."""
    words = [i for i, t in enumerate(toks) if t.editable]
    if len(words) < 2:
        return 0
    for _ in range(n):
        a, b = rng.sample(words, 2)
        ca, cb = toks[a].core, toks[b].core
        toks[a].core, toks[b].core = _match_case(cb.lower(), ca), _match_case(ca.lower(), cb)
    return n


def random_deletion(toks: list[Tok], p: float, rng: random.Random) -> int:
    """Delete each bare word (no attached punctuation) with probability ``p``; keep one."""
    bare = [i for i, t in enumerate(toks) if t.editable and not t.pre and not t.post]
    drop = {i for i in bare if rng.random() < p}
    if drop and len(drop) == len([t for t in toks if t.editable]):
        drop.discard(rng.choice(sorted(drop)))
    for i in sorted(drop, reverse=True):
        # remove the word and one following run of spaces
        end = i + 1 + (i + 1 < len(toks) and toks[i + 1].text.strip(" \t") == ""
                       and toks[i + 1].text != "" and "\n" not in toks[i + 1].text)
        del toks[i:end]
    return len(drop)


def eda_text(text: str, op: str, alpha: float, rng: random.Random,
             wn: WordNet | None = None) -> tuple[str, int]:
    """One EDA operation on ``text``; returns (new text, words changed).

    Args:
        text: input text (prose with code, URLs and numbers left as they are).
        op: one of ``sr``, ``ri``, ``rs``, ``rd``.
        alpha: fraction of editable words to change (``n = max(1, alpha * n_words)``).
        rng: the random source (seeded by the caller).
        wn: WordNet reader for SR and RI.
    """
    toks = tokenize(text)
    n_words = sum(t.editable for t in toks)
    if n_words == 0:
        return text, 0
    n = max(1, int(alpha * n_words))
    if op == "sr":
        k = synonym_replacement(toks, n, rng, wn or wordnet())
    elif op == "ri":
        k = random_insertion(toks, n, rng, wn or wordnet())
    elif op == "rs":
        k = random_swap(toks, n, rng)
    elif op == "rd":
        k = random_deletion(toks, alpha, rng)
    else:
        raise SlmError(f"unknown EDA operation '{op}'", f"use one of {', '.join(OPS)}")
    return detokenize(toks), k


# ---------------------------------------------------------------- records

TEXT_FIELDS = ("text", "prompt", "response")
COPY_FIELD = "augmented"           # on a copy: which copy and operation made it, e.g. "eda0-sr"


class AugmentConfig(BaseModel):
    """Options of ``slm augment`` (and of an ``augment`` recipe step)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: str = Field("eda", description="augmentation method (only 'eda')")
    n: int = Field(4, ge=1, le=64, description="augmented copies per record")
    alpha: float = Field(0.1, gt=0, le=0.5, description="fraction of words each copy changes")
    ops: list[str] = Field(default_factory=lambda: list(OPS), description="EDA operations")
    seed: int = 0
    keep_original: bool = Field(True, description="also write the original records")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v != "eda":
            raise ValueError(f"unknown method '{v}'; use 'eda'")
        return v

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if o not in OPS]
        if bad or not v:
            raise ValueError(f"unknown operation(s) {bad or v}; use some of {', '.join(OPS)}")
        return v


@dataclass
class AugmentReport:
    """What augmentation did: records in/out and changes per operation."""

    records_in: int = 0
    records_out: int = 0
    copies: Counter = field(default_factory=Counter)          # augmented copies per op
    words_changed: Counter = field(default_factory=Counter)   # words touched per op
    unchanged_skipped: int = 0     # copies identical to the original (e.g. only code)

    def as_dict(self) -> dict:
        return {"records_in": self.records_in, "records_out": self.records_out,
                "copies": dict(self.copies), "words_changed": dict(self.words_changed),
                "unchanged_skipped": self.unchanged_skipped}


def _rng_for(seed: int, key: str) -> random.Random:
    """A random source that depends only on the seed and the record, not on order."""
    h = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def _map_text_fields(rec: dict, fn) -> dict:
    """A copy of ``rec`` with ``fn`` applied to its text fields only."""
    out = json.loads(json.dumps(rec))
    for k in TEXT_FIELDS:
        if isinstance(out.get(k), str):
            out[k] = fn(out[k])
    for m in out.get("messages") or []:
        if isinstance(m.get("content"), str) and m.get("role") != "system":
            m["content"] = fn(m["content"])
    return out


def augment_records(records: list[dict], cfg: AugmentConfig,
                    wn: WordNet | None = None) -> tuple[list[dict], AugmentReport]:
    """EDA copies of ``records`` (each copy uses one operation, ops taken in turn).

    Args:
        records: data records (``text``, ``prompt``/``response`` or ``messages``).
        cfg: the options (``n`` copies, ``alpha``, ``ops``, ``seed``).
        wn: WordNet reader (loaded on first use when SR or RI is asked for).
    """
    if wn is None and {"sr", "ri"} & set(cfg.ops):
        wn = wordnet()
    rep = AugmentReport(records_in=len(records))
    out = []
    for j, rec in enumerate(records):
        rng = _rng_for(cfg.seed, f"{rec.get('id', j)}")
        if cfg.keep_original:
            out.append(rec)
        order = list(cfg.ops)
        rng.shuffle(order)
        for k in range(cfg.n):
            op = order[k % len(order)]
            changed = [0]

            def fn(text: str, op=op, changed=changed) -> str:
                new, c = eda_text(text, op, cfg.alpha, rng, wn)
                changed[0] += c
                return new

            new = _map_text_fields(rec, fn)
            if new == rec or changed[0] == 0:
                rep.unchanged_skipped += 1
                continue
            new[COPY_FIELD] = f"eda{k}-{op}"          # the user's own fields stay as written
            out.append(new)
            rep.copies[op] += 1
            rep.words_changed[op] += changed[0]
    rep.records_out = len(out)
    return out, rep


def write_records(records: list[dict], out: Path) -> None:
    """Write records as JSONL (``.jsonl``) or as text paragraphs (``.txt``/``.md``), atomically."""
    out = Path(out)
    if out.suffix not in (".jsonl", ".txt", ".md"):
        raise SlmError(f"output {out} must end in .jsonl, .txt or .md", "change --out")
    if out.suffix != ".jsonl" and any("text" not in r for r in records):
        raise SlmError(f"records with prompt/response or messages cannot be written as {out.suffix}",
                       "use an --out ending in .jsonl")
    if out.suffix == ".jsonl":
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        body = "\n\n".join(r["text"].strip("\n") for r in records) + "\n"
    if not out.parent.is_dir():
        raise SlmError(f"the directory of {out} does not exist", "create it first")
    atomic_write_text(out, body)


def _records_as_written(data) -> list[dict]:
    """The records of ``data``; a JSONL file's exactly as written (no ids added)."""
    path = Path(str(data)).expanduser()
    if not (path.is_file() and path.suffix == ".jsonl"):
        return read_records(data)
    records = []
    for n, rec in iter_jsonl(path):
        validate_record(rec, f"{path}:{n}")
        records.append(rec)
    if not records:
        raise SlmError(f"data '{data}' is empty", "give it some text")
    return records


def run_augment(data: str | Path, out: str | Path, cfg: AugmentConfig) -> dict:
    """Read ``data``, write originals plus EDA copies to ``out``, return the report.

    Args:
        data: a file, a directory or a built-in corpus (see ``slmkit.data.read_records``).
        out: output file (``.jsonl`` keeps every field; ``.txt``/``.md`` for text records).
        cfg: augmentation options.
    """
    t0 = time.time()
    records = _records_as_written(data)
    augmented, rep = augment_records(records, cfg)
    write_records(augmented, Path(out))
    return {"data": str(data), "out": str(out), "config": cfg.model_dump(), **rep.as_dict(),
            "seconds": round(time.time() - t0, 2)}
