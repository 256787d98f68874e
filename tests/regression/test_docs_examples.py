"""The CI example a user copies must run the real commands with options that exist."""

from __future__ import annotations

import re
from pathlib import Path

import typer
import yaml

from capplan.cli import app

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "docs" / "examples" / "github-actions.yml"
CI_DOC = REPO / "docs" / "ci.md"


def _capplan_flags(text: str, env: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(subcommand, its --flags) for every `capplan SUBCOMMAND ...` line, continuations joined
    and `$VAR`s from `env` expanded."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for name, value in env.items():
        joined = joined.replace(f"${name}", value)
    calls = []
    for match in re.finditer(r"capplan ([a-z][a-z-]*)([^\n#]*)", joined):
        # A quoted argument is a value (`--launch '--backend emulated'` holds the server's flags).
        args = re.sub(r"'[^']*'", "''", match[2])
        calls.append((match[1], re.findall(r"(?<![\w-])--[a-z][a-z-]*", args)))
    return calls


def _options(subcommand: str) -> set[str]:
    commands = getattr(typer.main.get_command(app), "commands", {})
    command = commands.get(subcommand)
    assert command is not None, f"no `capplan {subcommand}`"
    return {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}


def _check(calls: list[tuple[str, list[str]]]) -> None:
    for subcommand, flags in calls:
        known = _options(subcommand)
        for flag in flags:
            assert flag in known, f"`capplan {subcommand}` has no {flag}"


def test_the_github_actions_example_is_valid_yaml_running_real_commands() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["regression"]
    scripts = "\n".join(step.get("run", "") for step in job["steps"])
    calls = _capplan_flags(scripts, {k: str(v) for k, v in job.get("env", {}).items()})
    assert {c[0] for c in calls} >= {"loadtest", "compare"}
    assert any("--max-regression" in flags for _, flags in calls)  # $LIMITS was expanded
    _check(calls)


def test_the_commands_in_docs_ci_exist_with_those_options() -> None:
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", CI_DOC.read_text(), flags=re.DOTALL)
    calls = _capplan_flags("\n".join(blocks), {})
    assert {c[0] for c in calls} >= {"loadtest", "compare"}
    _check(calls)
