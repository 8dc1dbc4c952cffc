"""The README's promise: its first code block is the two commands, and CI runs the second."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_first_code_block_is_setup_and_demo_then_tests() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```[a-z]*\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    lines = block.group(1).strip().splitlines()
    assert lines == ["scripts/setup.sh && .venv/bin/mgte demo", "scripts/test.sh"]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert commands[-1] == "exec scripts/test.sh"
