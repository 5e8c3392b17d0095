"""A real Prometheus (Debian package `prometheus`) on 127.0.0.1 with its data in a temp dir, ended by PID,
and the two HTTP API calls the tests need."""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from evstore.client.harness.localnode import free_port
from evstore.client.harness.localprocess import LocalProcess


class PrometheusProcess(LocalProcess):
    label = "prometheus"

    def __init__(self, base_dir: Path, scrape_configs: list[dict], rule_files: list[str], interval: str = "1s"
                 ) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.base_dir / "prometheus.log"
        self.config_path = self.base_dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump({
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": rule_files, "scrape_configs": scrape_configs}))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    address = url

    def start(self, wait: bool = True) -> "PrometheusProcess":
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed (make prometheus)"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary, f"--config.file={self.config_path}",
                                      f"--storage.tsdb.path={self.base_dir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def _get(self, path: str, **params) -> list[dict]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus refused {params.get('query')!r}: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]["result"]

    def query(self, expr: str, at: float) -> list[dict]:
        return self._get("/api/v1/query", query=expr, time=f"{at:.3f}")

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self._get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")
