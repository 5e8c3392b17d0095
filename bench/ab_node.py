"""A/B of two source trees' nodes under the same load: `python bench/ab_node.py TREE CASES DURATION` starts a
node from TREE (its src/ on PYTHONPATH), runs this tree's bench/append.py against it with --url and --node-pid,
and prints events/s and the node's CPU time per event for each case (CASES: comma-separated, as --cases)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "src"))
from evstore.client.harness.localnode import NodeProcess  # noqa: E402

tree, cases, duration = sys.argv[1], sys.argv[2], sys.argv[3]
tmp = Path(tempfile.mkdtemp()); (tmp / "data").mkdir()
node = NodeProcess(tmp / "data", args=("--log-level", "warning"), new_session=True)
node.env = {"PYTHONPATH": f"{tree}/src"}
node.start()
try:
    r = subprocess.run([sys.executable, str(HERE / "bench" / "append.py"), "--url", node.url, "--node-pid", str(node.pid), "--no-reference", "--json",
                        "--cases", cases, "--duration", duration], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(HERE / "src")})
    for c in json.loads(r.stdout)["evstore"]:
        print(f"{Path(tree).name:12} {c['case']:18} {c['eventsPerSecond']:>10,.0f} ev/s  p50 {c['p50Ms']:7.2f} ms  server cpu {c['serverCpuUsPerEvent']:8.2f} us/ev  client cpu {c['clientCpuUsPerEvent']:6.2f} us/ev")
finally:
    node.terminate(); shutil.rmtree(tmp, ignore_errors=True)
