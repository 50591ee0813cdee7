"""Writing one benchmark's section into benchmarks/RESULTS.md, leaving every other section alone."""
from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, section: str, body: str) -> None:
    """Replace (or append) the `section` heading's part of `path` with `body`."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(f"\n{section}\n")
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{body}\n"
    else:
        end = text.find("\n## ", start + len(section) + 2)
        text = text[: start + 1] + body + "\n" + (text[end:] if end >= 0 else "")
    path.write_text(text)
