"""The wheel carries node, client and operator as evstore.node / evstore.client / evstore.operator
(reached through symlinks in src/evstore), and none of them shadows the standard library."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_and_imports_every_package(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("evstore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("evstore/node/app.py", "evstore/node/api/streams.py", "evstore/client/cli.py",
                   "evstore/operator/handlers.py", "evstore/ids.py"):
        assert module in names, module
    assert not any(n.startswith("operator/") for n in names), "a top-level `operator` would shadow the stdlib"

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = ("import evstore, evstore.node.app, evstore.client.cli, evstore.operator.manifests, operator; "
             "print(evstore.__file__); print(operator.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    evstore_file, operator_file = out.stdout.split()
    assert evstore_file.startswith(str(target))
    assert "evstore" not in operator_file, "the stdlib operator module must win"


def test_python_in_the_repository_root_keeps_the_stdlib_operator():
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.eq)"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "built-in function eq" in out.stdout, out.stderr
