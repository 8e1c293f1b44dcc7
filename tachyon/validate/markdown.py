"""report.md: the validation report as Markdown (for a pull request, a model card or a terminal)."""

from __future__ import annotations

from tachyon.validate import table


def render_markdown(payload: dict) -> str:
    lines = [render_summary(payload), "", "## Steps and commands to reproduce every figure", ""]
    for step in table.steps(payload):
        lines.append(f"### {step['label']}: {step['name']} — {step['status']} ({step['seconds']:.1f} s)")
        lines.append("")
        if step["error"]:
            lines += ["```text", step["error"].strip(), "```", ""]
        if step["command"]:
            lines += ["```bash", step["command"], "```", ""]
    return "\n".join(lines)


def render_summary(payload: dict) -> str:
    """Title, table, recovery note and recommendations (what `tachyon validate` prints)."""
    headers, rows = table.summary_table(payload)
    lines = [
        f"# Validation of {payload['model']}",
        "",
        table.meta_line(payload),
        "",
        table.workload_line(payload),
        "",
        _table(headers, rows),
        "",
        table.recovery_note(payload),
        "",
        "## Recommendation",
        "",
        *(f"- **{r['use_case']}**: {r['choice'] or 'none'} — {r['reason']}" for r in payload["recommendations"]),
    ]
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    escape = lambda cell: cell.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(escape, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines)
