"""A tiny document model rendered both as Markdown and as self-contained HTML (images inlined)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Document:
    """Blocks of a report (headings, paragraphs, tables, images), each rendered as it is added both
    as Markdown (images by their path relative to ``root``) and as HTML (images inlined)."""

    root: Path
    _md: list[str] = field(default_factory=list, init=False)
    _html: list[str] = field(default_factory=list, init=False)

    def heading(self, text: str, level: int = 2) -> None:
        self._md.append(f"{'#' * level} {text}\n")
        self._html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self._md.append(f"{text}\n")
        self._html.append(f"<p>{_inline(text)}</p>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        self._md.append("\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows), ""]))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
        self._html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")

    def image(self, path: Path | None, caption: str) -> None:
        """Add an image if it exists (missing outputs are left out, not faked)."""
        if path is None or not Path(path).is_file():
            return
        self._md.append(f"![{caption}]({Path(path).relative_to(self.root).as_posix()})\n\n*{caption}*\n")
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self._html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def write(self, md: Path, title: str) -> Path:
        """Write the Markdown to ``md`` and the self-contained HTML page beside it; returns ``md``."""
        md.write_text(f"# {title}\n\n" + "\n".join(self._md))
        style = (
            "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
            "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
            "img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}figcaption{color:#555;font-size:90%}"
            "code{background:#f5f5f5;padding:0 3px}"
        )
        md.with_suffix(".html").write_text(
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(self._html)}</body></html>\n"
        )
        return md


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``count(1, "epoch")`` is ``"1 epoch"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** spans."""
    out = html.escape(text)
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
