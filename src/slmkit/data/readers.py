"""Readers for the files users have: plain text, Markdown, reStructuredText, HTML,
JSONL, CSV and Parquet.

Each reader takes a path and returns records (dicts with ``text``, or ``prompt`` and
``response``, or ``messages``). A text-like file (``.txt``, ``.md``, ``.rst``,
``.html``) is one record holding the whole file; a table (``.csv``, ``.parquet``) or
``.jsonl`` is one record per row. Text is decoded as strict UTF-8 (a byte order mark
is dropped) and NFC-normalised: decomposed Hangul or accents would otherwise cost
several tokens per character. Anything unreadable raises :class:`SlmError` naming the
file and what to do.

A table's text column is ``text`` unless ``text_field`` names another; JSONL takes
``text_field`` too, for records whose text is under another key.
"""
from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

from ..errors import SlmError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
SUFFIXES = TEXT_SUFFIXES + TABLE_SUFFIXES
SNIFF_BYTES = 8192


def nfc(text: str) -> str:
    """Unicode NFC: composed characters (one code point per Hangul syllable)."""
    return unicodedata.normalize("NFC", text)


def read_file(path: Path, text_field: str | None = None) -> list[dict]:
    """Records of one file, by its suffix.

    Args:
        path: the file.
        text_field: the column (CSV, Parquet) or key (JSONL) holding the text;
            default ``text``.

    Raises:
        SlmError: unknown suffix, a binary or non-UTF-8 file, a missing or empty column.
    """
    suffix = path.suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise SlmError(f"{path}: unsupported file type '{path.suffix}'",
                       f"use one of {', '.join(SUFFIXES)}")
    if suffix in TEXT_SUFFIXES:
        text = reader(path)
        return [{"text": text, "id": path.name}] if text.strip() else []
    return reader(path, text_field)


# ---------------------------------------------------------------- bytes -> str

def read_text(path: Path, fallback: str | None = None) -> str:
    """The file as NFC text: strict UTF-8, or ``fallback`` (a declared charset).

    Raises:
        SlmError: a binary file, or bytes that are not valid in the encoding.
    """
    raw = path.read_bytes()
    if b"\0" in raw[:SNIFF_BYTES]:
        raise SlmError(f"{path}: looks like a binary file, not text (it has NUL bytes)",
                       "pass text files, or remove this one from the data directory")
    try:
        return nfc(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        if fallback:
            try:
                return nfc(raw.decode(fallback))
            except (LookupError, UnicodeDecodeError):
                pass
        raise SlmError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                       f"{exc.start})", f"convert it, e.g. `iconv -f cp949 -t utf-8 {path.name}`"
                       ) from exc


def plain(path: Path) -> str:
    """``.txt`` and ``.md`` as they are."""
    return read_text(path)


# ---------------------------------------------------------------- reStructuredText

_RST_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
_RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+(\S+::.*|_[^:]+:.*|\|[^|]+\|.*)$")
_RST_ROLE = re.compile(r":[\w:+-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")


def rst(path: Path) -> str:
    """``.rst`` without section underlines, directive and target lines, with roles and
    links reduced to their text (the content under a directive is kept)."""
    out = []
    for line in read_text(path).splitlines():
        if _RST_ADORNMENT.match(line) or _RST_DIRECTIVE.match(line):
            continue
        line = _RST_LINK.sub(r"\1", _RST_ROLE.sub(r"\1", line))
        out.append(line.replace("``", ""))
    return "\n".join(out)


# ---------------------------------------------------------------- HTML

# Elements whose content is never prose: code that runs, styling, site navigation.
SKIP_TAGS = {"script", "style", "noscript", "template", "head", "nav", "header", "footer",
             "aside", "form", "button", "select", "svg", "iframe", "object", "canvas", "menu"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
             "param", "source", "track", "wbr"}
BLOCK_TAGS = {"p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6",
              "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "td", "th", "pre",
              "blockquote", "br", "hr", "figure", "figcaption", "caption", "body", "html"}


class _TextExtractor(HTMLParser):
    """Text of an HTML document, one line per block element, skipped elements dropped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip: list[str] = []              # open elements whose content is dropped
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in VOID_TAGS:
            if tag in BLOCK_TAGS and not self.skip:
                self.parts.append("\n")
            return
        if self.skip or tag in SKIP_TAGS:
            self.skip.append(tag)
            return
        if tag == "pre":
            self.pre += 1
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if self.skip:
            if tag in self.skip:                 # close up to the matching element
                while self.skip and self.skip.pop() != tag:
                    pass
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = (ln.strip() for ln in "".join(self.parts).splitlines())
        return "\n".join(ln for ln in lines if ln)


_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_-]+)""", re.I)


def html_text(markup: str) -> str:
    """Visible prose of an HTML document (scripts, styles, navigation, header and
    footer dropped), one line per paragraph or other block."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return parser.text()


def html(path: Path) -> str:
    """``.html``/``.htm``: UTF-8, or the charset its ``<meta>`` declares."""
    head = path.read_bytes()[:2048]
    m = _CHARSET.search(head)
    declared = m.group(1).decode("ascii").lower() if m else None
    return html_text(read_text(path, fallback=declared if declared != "utf-8" else None))


# ---------------------------------------------------------------- tables

def _column_records(path: Path, rows: list, field: str, columns: list[str],
                    hint: str) -> list[dict]:
    """One ``{text, id}`` record per row with text in ``field``."""
    if field not in columns:
        raise SlmError(f"{path}: no column '{field}' (columns: {', '.join(map(str, columns))})",
                       f"name the text column with {hint}")
    out = []
    for n, value in rows:
        if value is None:
            continue
        if not isinstance(value, str):
            raise SlmError(f"{path}: column '{field}' holds {type(value).__name__} values, not "
                           "text", f"name a text column with {hint}")
        if value.strip():
            out.append({"text": nfc(value), "id": f"{path.name}:{n}"})
    if not out:
        raise SlmError(f"{path}: column '{field}' is empty", f"name a column with text in it "
                       f"with {hint}")
    return out


def table_csv(path: Path, text_field: str | None) -> list[dict]:
    """``.csv`` with a header row: one record per row, text from one column."""
    field = text_field or "text"
    text = read_text(path)
    try:
        dialect = csv.Sniffer().sniff(text[:SNIFF_BYTES], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    csv.field_size_limit(1 << 30)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
        columns = list(reader.fieldnames or [])
        rows = [(n, row.get(field)) for n, row in enumerate(reader, 2)]
    except csv.Error as exc:
        raise SlmError(f"{path}: not a valid CSV file ({exc})", "fix the file") from exc
    return _column_records(path, rows, field, columns, "--text-field (`text_field:` in a "
                           "recipe)")


def table_parquet(path: Path, text_field: str | None) -> list[dict]:
    """``.parquet``: one record per row, text from one string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    field = text_field or "text"
    try:
        schema = pq.read_schema(path)
        columns = list(schema.names)
        if field not in columns:
            return _column_records(path, [], field, columns, "--text-field")
        values = pq.read_table(path, columns=[field]).column(field)
    except (pa.ArrowException, OSError) as exc:
        raise SlmError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})",
                       "check the file, or export the table again") from exc
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
            or pa.types.is_null(values.type)):
        raise SlmError(f"{path}: column '{field}' holds {values.type} values, not text",
                       "name a text column with --text-field")
    rows = enumerate(values.to_pylist(), 1)
    return _column_records(path, list(rows), field, columns, "--text-field")


def table_jsonl(path: Path, text_field: str | None) -> list[dict]:
    """``.jsonl``: one record per line (``text``, ``prompt``/``response`` or
    ``messages``), or with ``text_field`` the text under that key."""
    out = []
    for n, rec in iter_jsonl(path):
        if text_field:
            value = rec.get(text_field) if isinstance(rec, dict) else None
            if not isinstance(value, str):
                raise SlmError(f"{path}:{n}: no text under '{text_field}'",
                               "fix that line, or name the key with --text-field")
            rec = {"text": value, "id": rec.get("id", f"{path.name}:{n}")}
        validate_record(rec, f"{path}:{n}")
        rec.setdefault("id", f"{path.name}:{n}")
        out.append(nfc_record(rec))
    return out


def iter_jsonl(path: Path, text: str | None = None):
    """``(line number, object)`` for each non-blank line of a JSONL file.

    The file is read a line at a time; a line longer than ``MAX_LINE_BYTES`` is refused
    without reading the rest of it.

    Raises:
        SlmError: naming the file and line that is not valid JSON, not UTF-8, or too long.
    """
    lines = _lines(path) if text is None else enumerate(text.splitlines(), 1)
    for n, line in lines:
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise SlmError(f"{path}:{n}: not valid JSON ({exc.msg})", "fix that line") from exc
        except RecursionError:
            raise SlmError(f"{path}:{n}: JSON nested too deeply", "fix that line") from None


MAX_LINE_BYTES = 64 << 20          # one JSONL record; a longer line is refused


def _lines(path: Path):
    """Numbered lines of a strict UTF-8 file (BOM dropped), each at most
    ``MAX_LINE_BYTES`` long, read one at a time."""
    with open(path, "rb") as f:
        if b"\0" in f.read(SNIFF_BYTES):
            raise SlmError(f"{path}: looks like a binary file, not text (it has NUL bytes)",
                           "pass text files, or remove this one from the data directory")
        f.seek(0)
        n, offset = 0, 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            n += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise SlmError(f"{path}:{n}: line is longer than {MAX_LINE_BYTES:,} bytes",
                               "split that record or check the file")
            start = 3 if n == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
            try:
                yield n, raw[start:].decode("utf-8")
            except UnicodeDecodeError as exc:
                at = offset + start + exc.start
                raise SlmError(f"{path}: not UTF-8 text (byte 0x{raw[start + exc.start]:02x} at "
                               f"offset {at}) on line {n}", f"convert it, e.g. `iconv -f cp949 -t "
                               f"utf-8 {path.name}`") from None
            offset += len(raw)


def nfc_record(rec: dict) -> dict:
    """The record with every string in it NFC-normalised."""
    def norm(v):
        if isinstance(v, str):
            return nfc(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v
    return norm(rec)


def validate_record(rec, where: str) -> None:
    """Raise unless ``rec`` is a text, prompt/response or chat record."""
    ok = isinstance(rec, dict) and (
        isinstance(rec.get("text"), str)
        or (isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str))
        or (isinstance(rec.get("messages"), list) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in rec["messages"])))
    if not ok:
        raise SlmError(f"{where}: record needs 'text', or 'prompt' and 'response', or "
                       "'messages' (list of {role, content})", "fix that line")


READERS: dict[str, Callable] = {
    ".txt": plain, ".md": plain, ".rst": rst, ".html": html, ".htm": html,
    ".jsonl": table_jsonl, ".csv": table_csv, ".parquet": table_parquet,
}
