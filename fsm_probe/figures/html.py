"""The one offline HTML page: plotly.js inlined once in the head, shared styling, captioned figures.

The report and `fsm-probe extract`'s `figures.html` are both rendered here, so they look alike
and both open without a network.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1150px;margin:auto;
padding:0 1.2em 3em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}nav{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd;z-index:9}
nav a{margin-right:.9em;font-size:.92em}section{margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f3f3f3}figure{margin:1em 0 1.6em;border:1px solid #eee;padding:.4em}
figcaption{font-size:.9em;color:#444;margin-top:.3em}.note{color:#8a5300;background:#fff6e5;padding:.4em .6em}
.verdict{font-size:1.1em;background:#eef5ff;border-left:4px solid #3366cc;padding:.5em .8em}
pre{background:#f7f7f7;padding:.5em .8em;white-space:pre-wrap}
"""


def figure_block(fig: go.Figure, caption: str) -> str:
    """A figure as a plotly div (no plotly.js of its own) with a "How to read it" caption.

    `caption` is HTML; escape user strings before putting them in it."""
    height = fig.layout.height or 420
    div = fig.to_html(
        full_html=False, include_plotlyjs=False, default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )
    return f"<figure>{div}<figcaption><b>How to read it.</b> {caption}</figcaption></figure>"


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """A complete page: `sections` are (anchor, heading, body HTML); a navigation bar links them."""
    from plotly.offline import get_plotlyjs

    nav = "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name, _ in sections)
    body = "".join(
        f'<section id="{key}"><h2>{html.escape(name)}</h2>{content}</section>'
        for key, name, content in sections
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p><nav>{nav}</nav>{body}"
        "</body></html>\n"
    )
