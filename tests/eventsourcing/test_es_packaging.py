"""The wheel carries the module once, as evstore.eventsourcing, and eventsourcing finds its factory there."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_evstore_eventsourcing_once(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("evstore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "evstore/eventsourcing/factory.py" in names
    assert not any(n.startswith("evstore/client/eventsourcing/") for n in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = ("from eventsourcing.persistence import InfrastructureFactory as F; "
             "f = F.construct({'PERSISTENCE_MODULE': 'evstore.eventsourcing'}); print(type(f).__module__); f.close()")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["evstore.eventsourcing.factory"]
