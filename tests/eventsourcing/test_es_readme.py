"""The README's eventsourcing examples (the dog school, and a projection driven by a subscription)
run as written against a fresh node."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks() -> list[str]:
    section = README.read_text().split("## The eventsourcing persistence module", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_both_examples():
    blocks = _blocks()
    assert len(blocks) == 2
    assert "DogSchool" in blocks[0] and "ProjectionRunner" in blocks[1]


@pytest.mark.parametrize("index", [0, 1], ids=["dog_school", "projection"])
def test_readme_example_runs(index, evstore_node):
    code = _blocks()[index]
    env = {**os.environ, "EVSTORE_URL": evstore_node.url}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert ("notification ids [1, 2, 3]" in out.stdout) if index == 0 else ("sit: 2 roll over: 1" in out.stdout)
