"""The scripts in bench/ run as `python bench/NAME.py`, which puts bench/ first on sys.path, where
bench/eventsourcing.py would shadow the eventsourcing library (and the reference runs would be skipped)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
WRAPPERS = ["append.py", "mixed.py", "cluster.py", "subscribe.py", "eventsourcing.py"]


@pytest.mark.parametrize("script", WRAPPERS)
def test_a_bench_script_imports_the_eventsourcing_library_not_its_neighbour(script):
    probe = ("import runpy, sys; sys.argv = [sys.argv[0], '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(BENCH / script)!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "import eventsourcing.sqlite; print(eventsourcing.__file__)\n")
    # run the script as Python would: its directory first on sys.path
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r})\n" + probe],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "site-packages" in done.stdout.splitlines()[-1]


def test_the_instruction_count_loops_run():
    """bench/append_instructions.py's measured loops, once each, without valgrind (which CI need not have)."""
    for part in ("api", "ids", "seal", "log", "logids"):
        done = subprocess.run([sys.executable, str(BENCH / "append_instructions.py"), "--inner", part, "2"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
