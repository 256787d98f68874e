"""A comparison as CI wants it: Markdown for a pull-request comment, JUnit XML for test reports."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from capplan.regression.compare import Comparison, MetricComparison
from capplan.render.regression import delta_text, fmt, p_text

_ICON = {
    "regression": "❌ regression",
    "noise": "〰️ within noise",
    "pass": "✅ pass",
    "improved": "🚀 improved",
    "info": "",
    "missing": "⚠️ missing",
}


def comparison_markdown(comparison: Comparison) -> str:
    if comparison.passed:
        head = "### ✅ capplan: no performance regression"
    else:
        names = ", ".join(f"`{r.label}`" for r in comparison.regressions)
        head = f"### ❌ capplan: performance regression in {names}"
    lines = [
        head,
        "",
        f"Baseline `{comparison.baseline}` vs current `{comparison.current}`. A metric regresses "
        f"when it is worse than its limit and a test on the raw requests says it is not noise "
        f"(one-sided, alpha {comparison.alpha:g}).",
        "",
        *(f"> ⚠️ {w}\n" for w in comparison.warnings),
    ]
    judged = [r for r in comparison.rows if r.limit is not None]
    others = [r for r in comparison.rows if r.limit is None]
    lines.extend(_table(judged))
    if others:
        # Shown, not judged: folded so the verdicts stay on one screen of the pull request.
        lines += ["", "<details><summary>Other metrics (not judged)</summary>", ""]
        lines += [*_table(others), "", "</details>"]
    return "\n".join(lines) + "\n"


def _table(rows: list[MetricComparison]) -> list[str]:
    lines = [
        "| metric | baseline | current | delta | limit | p (worse) | verdict |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.label} | {fmt(row.baseline, row.metric)} | {fmt(row.current, row.metric)} "
            f"| {delta_text(row)} | {_limit(row)} "
            f"| {p_text(row)} | {_ICON[row.verdict]} |"
        )
    return lines


def _limit(row: MetricComparison) -> str:
    return row.limit.text.split("=", 1)[1] if row.limit else ""


def comparison_junit(comparison: Comparison) -> str:
    """One test case per limited metric; a regression is a failure, a missing figure an error."""
    judged = [r for r in comparison.rows if r.limit is not None]
    suite = ET.Element(
        "testsuite",
        name="capplan.compare",
        tests=str(len(judged)),
        failures=str(sum(r.verdict == "regression" for r in judged)),
        errors=str(sum(r.verdict == "missing" for r in judged)),
    )
    for row in judged:
        case = ET.SubElement(suite, "testcase", classname="capplan.compare", name=row.label)
        message = (
            f"{row.metric}: baseline {fmt(row.baseline, row.metric)}, current "
            f"{fmt(row.current, row.metric)} ({delta_text(row)}), limit {_limit(row)}"
        )
        if row.p_value is not None:
            message += f", p={row.p_value:.3f} ({row.test})"
        elif row.test:
            message += f", noise test {row.test}"
        if row.verdict == "regression":
            ET.SubElement(case, "failure", message=message, type="regression").text = message
        elif row.verdict == "missing":
            ET.SubElement(case, "error", message=message, type="missing").text = message
        else:
            ET.SubElement(case, "system-out").text = f"{row.verdict}: {message}"
    # Totals on <testsuites> too: some CI parsers read only the root element.
    suites = ET.Element("testsuites", {k: suite.attrib[k] for k in ("tests", "failures", "errors")})
    suites.set("name", "capplan compare")
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode")
