"""report.md: the report as GitHub-flavoured Markdown, figures linked from plots/."""

from __future__ import annotations

from capplan.loadtest.report.content import ReportContent, Table, is_numeric


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_cell(h) for h in table.headers) + " |")
    aligns = ["---"] + [
        "--:" if table.figures and _numeric_column(table, i) else "---"
        for i in range(1, len(table.headers))
    ]
    lines.append("|" + "|".join(aligns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def _numeric_column(table: Table, index: int) -> bool:
    values = [row[index] for row in table.rows if index < len(row) and row[index] != "-"]
    return bool(values) and all(is_numeric(v) for v in values)


def render_markdown(content: ReportContent, plot_paths: dict[str, str]) -> str:
    """`plot_paths` maps each plot's name to its path relative to report.md."""
    lines = [f"# {content.title}", ""]
    if content.valid:
        lines.append("**Valid run.**")
    else:
        lines += ["**INVALID run:**", ""]
        lines += [f"- {reason}" for reason in content.reasons or ["see summary.json"]]
    lines.append("")
    for key, value in content.facts:
        lines.append(f"- **{key}:** {value}")
    if content.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in content.notes]
    lines += ["", "## Results", ""]
    for table in content.tables:
        lines += [render_table(table), ""]
    if content.plots:
        lines += ["## Figures", ""]
        for plot in content.plots:
            lines += [f"### {plot.title}", "", f"![{plot.title}]({plot_paths[plot.name]})", ""]
            lines += [f"_{plot.caption}_", ""]
    if content.environment:
        lines += ["## Environment", ""]
        lines += [f"- **{k}:** {v}" for k, v in content.environment]
        lines.append("")
    lines += ["## Configuration", "", "```json", content.config_json, "```", ""]
    return "\n".join(lines)
