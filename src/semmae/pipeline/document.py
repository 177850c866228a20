"""A tiny document model rendered both as Markdown and as self-contained HTML (images inlined)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Document:
    """Blocks of a report: headings, paragraphs, tables and images (paths relative to ``root``)."""

    root: Path
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, path: Path | None, caption: str) -> None:
        """Add an image if it exists (missing outputs are left out, not faked)."""
        if path is not None and Path(path).is_file():
            self.blocks.append(("img", (Path(path), caption)))

    def markdown(self) -> str:
        out: list[str] = []
        for kind, value in self.blocks:
            if kind == "h":
                level, text = value  # type: ignore[misc]
                out.append(f"{'#' * level} {text}\n")
            elif kind == "p":
                out.append(f"{value}\n")
            elif kind == "table":
                header, rows = value  # type: ignore[misc]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out.extend("| " + " | ".join(r) + " |" for r in rows)
                out.append("")
            elif kind == "img":
                path, caption = value  # type: ignore[misc]
                out.append(f"![{caption}]({path.relative_to(self.root).as_posix()})\n\n*{caption}*\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        body: list[str] = []
        for kind, value in self.blocks:
            if kind == "h":
                level, text = value  # type: ignore[misc]
                body.append(f"<h{level}>{html.escape(text)}</h{level}>")
            elif kind == "p":
                body.append(f"<p>{_inline(str(value))}</p>")
            elif kind == "table":
                header, rows = value  # type: ignore[misc]
                head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
                trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "img":
                path, caption = value  # type: ignore[misc]
                data = base64.b64encode(path.read_bytes()).decode()
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        style = (
            "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
            "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
            "img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}figcaption{color:#555;font-size:90%}"
            "code{background:#f5f5f5;padding:0 3px}"
        )
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n"
        )


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** spans."""
    out = html.escape(text)
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
