"""A/B of two source trees' nodes under the same load: `python bench/ab_node.py TREE CASES DURATION [--reference]`
starts a node from TREE (its src/ on PYTHONPATH), runs this tree's bench/append.py against it with --url and
--node-pid, and prints events/s and the node's CPU time per event for each case (CASES: comma-separated, as
--cases). With --reference, eventsourcing's PostgreSQL recorder runs the same cases in the same run, and the
ratios are printed too."""
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
reference = "--reference" in sys.argv[4:]
tmp = Path(tempfile.mkdtemp()); (tmp / "data").mkdir()
node = NodeProcess(tmp / "data", args=("--log-level", "warning"), new_session=True)
node.env = {"PYTHONPATH": f"{tree}/src"}
node.start()
try:
    r = subprocess.run([sys.executable, str(HERE / "bench" / "append.py"), "--url", node.url, "--node-pid", str(node.pid),
                        *(() if reference else ("--no-reference",)), "--json", "--cases", cases, "--duration", duration],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE / "src")})
    doc = json.loads(r.stdout)
    for system in ("evstore", "eventsourcing"):
        for c in doc.get(system, []):
            print(f"{Path(tree).name:12} {system:13} {c['case']:18} {c['eventsPerSecond']:>10,.0f} ev/s  p50 {c['p50Ms']:7.2f} ms  server cpu {c['serverCpuUsPerEvent']:8.2f} us/ev  client cpu {c['clientCpuUsPerEvent']:6.2f} us/ev")
    if reference:
        print(f"{Path(tree).name:12} ratios", {case: round(v, 2) if v else v for case, v in doc["ratio"].items()})
finally:
    node.terminate(); shutil.rmtree(tmp, ignore_errors=True)
