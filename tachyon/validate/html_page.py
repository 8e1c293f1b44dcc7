"""report.html: the validation report as one self-contained page (inline CSS, no scripts, no remote assets),
so it opens from disk, from a CI artifact or an email attachment the same way."""

from __future__ import annotations

from html import escape

from tachyon.validate import table

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #1b1f24; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; } .meta { color: #57606a; }
table { border-collapse: collapse; margin: 1em 0; } th, td { border: 1px solid #d0d7de; padding: 4px 8px; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.failed td { background: #fff5f5; } .ok { color: #1a7f37; } .failed { color: #cf222e; } .skipped { color: #9a6700; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; white-space: pre-wrap; }
pre.error { background: #fff5f5; border-left: 3px solid #cf222e; }
"""


def render_html(payload: dict) -> str:
    title = f"Validation of {payload['model']}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(table.meta_line(payload))}</p>',
        f"<p>{escape(table.workload_line(payload))}</p>",
        _summary(payload),
        f"<p>{escape(table.recovery_note(payload))}</p>",
        "<h2>Recommendation</h2>",
        '<ul id="recommendations">',
        *(
            f'<li data-use-case="{escape(r["use_case"])}"><b>{escape(r["use_case"])}</b>: '
            f"<b>{escape(r['choice'] or 'none')}</b> — {escape(r['reason'])}</li>"
            for r in payload["recommendations"]
        ),
        "</ul>",
        "<h2>Steps and commands to reproduce every figure</h2>",
        *(_step(step) for step in table.steps(payload)),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _summary(payload: dict) -> str:
    headers, rows = table.summary_table(payload)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    lines = ['<table id="summary">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for row in rows:
        failed = row[-1] != "ok"
        cells = [f"<td>{escape(row[0])}</td>"]
        cells += [f'<td class="num">{escape(cell)}</td>' for cell in row[1:-1]]
        cells.append(f'<td class="{"failed" if failed else "ok"}">{escape(row[-1])}</td>')
        css = ' class="failed"' if failed else ""
        lines.append(f'<tr data-label="{escape(row[0])}"{css}>{"".join(cells)}</tr>')
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _step(step: dict) -> str:
    status = escape(step["status"])
    parts = [
        f"<h3>{escape(step['label'])}: {escape(step['name'])} — "
        f'<span class="{status}">{status}</span> ({step["seconds"]:.1f} s)</h3>'
    ]
    if step["error"]:
        parts.append(f'<pre class="error">{escape(step["error"].strip())}</pre>')
    if step["command"]:
        parts.append(f'<pre class="command">{escape(step["command"])}</pre>')
    return "\n".join(parts)
