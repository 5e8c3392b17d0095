"""The README's quick start works as written (against a node on a free port instead of 7113)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SKIPPED = ("evstore verify", "evstore bench")  # need a stopped node / take long: covered by their own tests


def _blocks(language: str) -> list[str]:
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", quick_start, re.S)


def test_quick_start_shell_commands(node):
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "EVSTORE_URL": node.url}
    (block,) = _blocks("sh")
    script = "\n".join(line for line in block.splitlines() if not any(s in line for s in SKIPPED))
    assert "curl" in script and "evstore append" in script
    script = script.replace("localhost:7113", f"127.0.0.1:{node.port}").replace(".venv/bin", bindir)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert '"error"' not in out.stdout, out.stdout
    assert '"fromVersion":1,"version":2,"position":2' in out.stdout


def test_quick_start_python(node):
    (code,) = _blocks("python")
    code = code.replace("http://127.0.0.1:7113", node.url)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OrderPlaced" in out.stdout
