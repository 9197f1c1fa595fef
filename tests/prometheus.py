"""A real Prometheus for tests: Debian's ``prometheus`` on a free port, storage in tmp.

``prometheus_server`` (session-scoped) starts one with no targets, evaluating the example
alerting rules of configs/prometheus/ every second; a test points it at its
endpoints with :meth:`Prometheus.scrape` (rewrites the config, reloads it through the
lifecycle API, waits until every target has been scraped up) and asks it questions with
:meth:`Prometheus.query`. The process is stopped at the end of the session, even on failure.
Without Prometheus the fixture skips, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest
from broker import free_port
from procs import stop_process

_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "prometheus"
# The default rules and the drift rules (loaded in setups without the central's Alertmanager feed)
RULES = (_CONFIGS / "edgewatch.rules.yml", _CONFIGS / "edgewatch-drift.rules.yml")


def require_tool(name: str) -> str:
    """The path of ``name`` (prometheus, promtool); skip (fail under CI=true) when missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                  else None)
    if path is None:
        reason = f"{name} not installed (apt-get install prometheus; make stack)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


class Prometheus:
    """One Prometheus process on 127.0.0.1 with its config and storage in ``workdir``."""

    host = "127.0.0.1"

    def __init__(self, exe: str, workdir: Path, scrape_interval_s: float = 1.0,
                 rule_files: Sequence[Path] = ()) -> None:
        self.exe = exe
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.interval = f"{scrape_interval_s:g}s"
        self.rule_files = [str(p) for p in rule_files]
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log_path = workdir / "prometheus.log"
        self._write({})

    def _write(self, jobs: Dict[str, List[str]]) -> None:
        scrape = [{"job_name": job, "static_configs": [{"targets": targets}]}
                  for job, targets in jobs.items()]
        config = {"global": {"scrape_interval": self.interval,
                             "evaluation_interval": self.interval},
                  "rule_files": self.rule_files, "scrape_configs": scrape}
        self.config.write_text(json.dumps(config, indent=1))  # JSON is YAML

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until ``/-/ready`` answers 200."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address={self.host}:{self.port}", "--web.enable-lifecycle",
                 "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        self._wait(lambda: self._get("/-/ready") is not None, timeout, "/-/ready")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout)

    def log(self) -> str:
        """What Prometheus logged (for failure messages)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _get(self, path: str) -> Optional[bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return bytes(resp.read())
        except (urllib.error.URLError, ConnectionError):
            return None

    def _wait(self, ok: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus: {what} not met in {timeout}s\n"
                                     f"{self.log()[-3000:]}")
            time.sleep(0.1)

    def scrape(self, jobs: Dict[str, List[str]], timeout: float = 60.0) -> None:
        """Scrape ``{job: [host:port, ...]}`` from now on; return once every target is up."""
        self._write(jobs)
        request = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
        wanted = {(job, t) for job, targets in jobs.items() for t in targets}

        def all_up() -> bool:
            body = self._get("/api/v1/targets?state=active")
            active = json.loads(body)["data"]["activeTargets"] if body else []
            up = {(t["labels"]["job"], t["labels"]["instance"]) for t in active
                  if t["health"] == "up"}
            return wanted <= up
        self._wait(all_up, timeout, f"targets {sorted(wanted)} up")

    def query(self, expr: str) -> Dict[str, Any]:
        """``/api/v1/query``: the whole answer (``status``, ``data`` or ``error``)."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with its error
            return dict(json.loads(exc.read()))

    def rules(self) -> List[Dict[str, Any]]:
        """Every alerting rule with its ``health`` (ok, err, unknown) and ``lastError``."""
        body = self._get("/api/v1/rules?type=alert")
        assert body is not None, "prometheus: /api/v1/rules did not answer"
        return [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]

    def values(self, expr: str) -> List[Dict[str, Any]]:
        """The result vector of an instant query (AssertionError when the query fails)."""
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        return list(answer["data"]["result"])


@pytest.fixture(scope="session")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One running Prometheus for the session (scraping nothing until a test says what)."""
    server = Prometheus(require_tool("prometheus"), tmp_path_factory.mktemp("prometheus"),
                        rule_files=RULES)
    try:
        server.start()
        yield server
    finally:
        server.stop()
