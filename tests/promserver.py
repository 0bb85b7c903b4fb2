"""A throw-away Prometheus for tests: loopback only, its own temp dir, a short scrape interval.

Also the small HTTP helpers the metrics tests share: fetch an exposition, read cowtrace's
"serving metrics on URL" line, evaluate PromQL through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.kernel.streams import Lines

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
_URL = re.compile(r"serving metrics on (http://\S+/metrics)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 60.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read().decode()


def metrics_url(stderr: Lines, timeout: float = 60.0) -> str:
    """The URL cowtrace printed when it started serving."""
    return _URL.search(stderr.wait_for(_URL.pattern, timeout)).group(1)


class Prometheus:
    """`prometheus` scraping one target every `scrape_s` seconds; stop() kills it."""

    def __init__(self, workdir: Path, target: str, scrape_s: float = 1.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        every = f"{round(scrape_s * 1000)}ms"  # Prometheus durations take no fractions
        config.write_text(
            "global:\n"
            f"  scrape_interval: {every}\n"
            f"  scrape_timeout: {every}\n"
            "scrape_configs:\n"
            "  - job_name: cowtrace\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, "prometheus exited"
            try:
                http_get(f"{self.url}/-/ready", timeout=1)
                return
            except OSError:
                assert time.monotonic() < deadline, "prometheus never became ready"
                time.sleep(0.2)

    def query(self, expr: str) -> list[dict]:
        """An instant query at now; the result vector (raises on a PromQL error)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            answer = json.loads(http_get(url))
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr}: {error.read().decode()}") from error
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def wait_query(self, expr: str, timeout: float, accept=bool) -> list[dict]:  # noqa: ANN001
        """Repeat `expr` until `accept(result)` (non-empty by default)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if accept(result):
                return result
            assert time.monotonic() < deadline, f"timed out waiting for {expr}: {result}"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def promtool_check(exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def value(result: list[dict]) -> float:
    """The value of a one-sample instant vector."""
    assert len(result) == 1, result
    return float(result[0]["value"][1])
