"""report.html: one self-contained page (inline CSS, figures as base64 PNG, no external assets)."""

from __future__ import annotations

import base64
from html import escape

from capplan.loadtest.report.content import ReportContent, Table, is_numeric

_CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d1d1f;
 margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 8px}
h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid #e3e3e3;padding-bottom:4px}
h3{font-size:15px;margin:22px 0 6px}
.verdict{display:inline-block;padding:4px 12px;border-radius:14px;font-weight:600;margin:4px 0 12px}
.valid{background:#e3f5e6;color:#1b6b2a}.invalid{background:#fde7e7;color:#a4161a}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dl.facts dt{color:#666}dl.facts dd{margin:0}
table{border-collapse:collapse;margin:4px 0;font-variant-numeric:tabular-nums;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f3f4f6;font-weight:600}th:first-child,td:first-child{text-align:left}
td.text{text-align:left}table.kv td,table.kv th{text-align:left}
td.no{color:#a4161a;font-weight:600}.scroll{overflow-x:auto}
.note{color:#666;font-size:12px;margin:4px 0 0}
figure{margin:12px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:12.5px;margin-top:4px}
pre{background:#f6f8fa;padding:12px;overflow:auto;font-size:12px;border-radius:4px}
ul.notes li{color:#8a5a00}ul.reasons{margin:0 0 12px}ul.reasons li{color:#a4161a}
"""


def _cell_class(text: str) -> str:
    if text == "NO":
        return ' class="no"'
    return "" if is_numeric(text) else ' class="text"'


def render_table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(
            f"<td{_cell_class(c) if table.figures else ''}>{escape(c)}</td>" for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    kind = "" if table.figures else ' class="kv"'
    return (
        f'<h3>{escape(table.title)}</h3><div class="scroll"><table{kind}><thead><tr>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table></div>{note}"
    )


def render_html(content: ReportContent) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{escape(content.title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{escape(content.title)}</h1>",
    ]
    if content.valid:
        parts.append('<div class="verdict valid">valid run</div>')
    else:
        parts.append('<div class="verdict invalid">INVALID run</div>')
        reasons = content.reasons or ["see summary.json"]
        items = "".join(f"<li>{escape(r)}</li>" for r in reasons)
        parts.append(f'<ul class="reasons">{items}</ul>')
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in content.facts)
    parts.append(f'<dl class="facts">{facts}</dl>')
    if content.notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in content.notes)
        parts.append(f'<ul class="notes">{items}</ul>')
    parts.append("<h2>Results</h2>")
    parts += [render_table(t) for t in content.tables]
    if content.plots:
        parts.append("<h2>Figures</h2>")
        for plot in content.plots:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(
                f"<figure><h3>{escape(plot.title)}</h3>"
                f'<img alt="{escape(plot.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(plot.caption)}</figcaption></figure>"
            )
    if content.environment:
        env = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in content.environment)
        parts.append(f'<h2>Environment</h2><dl class="facts">{env}</dl>')
    parts.append(f"<h2>Configuration</h2><pre>{escape(content.config_json)}</pre>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
