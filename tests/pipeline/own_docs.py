"""A small directory of a user's own files, generated from Python's documentation: Markdown,
HTML pages with scripts and navigation, reStructuredText, plain text with one paragraph
per line, and a CSV whose text is in the column ``body``."""
import csv
import html
from pathlib import Path

from pydoc_data.topics import topics


def make_docs(root: Path, chars: int = 30_000, per_file: int = 3000) -> Path:
    """Write about ``chars`` characters of documentation under ``root``, in five formats."""
    root = Path(root)
    (root / "guide").mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for i, name in enumerate(sorted(topics)):
        if n >= chars:
            break
        text = topics[name].strip()[:per_file].rsplit("\n\n", 1)[0]
        paras = [p.replace("\n", " ").strip() for p in text.split("\n\n") if p.strip()]
        kind = i % 5
        if kind == 0:
            (root / f"{name}.md").write_text(f"# {name}\n\n" + "\n\n".join(paras))
        elif kind == 1:
            body = "".join(f"<p>{html.escape(p)}</p>" for p in paras)
            (root / "guide" / f"{name}.html").write_text(
                "<html><head><script>track('visit')</script><style>p {margin: 0}</style></head>"
                f"<body><nav>Home | Docs | Search</nav><h1>{name}</h1>{body}"
                "<footer>(c) the docs team</footer></body></html>")
        elif kind == 2:
            (root / f"{name}.txt").write_text("\n".join(paras))          # a paragraph a line
        elif kind == 3:
            (root / "guide" / f"{name}.rst").write_text(
                f"{name}\n{'=' * len(name)}\n\n" + "\n\n".join(paras))
        else:
            rows += [(name, p) for p in paras]
        n += len(text)
    with open(root / "faq.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "body"])
        w.writerows(rows)
    return root
