"""Start and stop the demo's processes: the service, and a Prometheus server.

Used by ``watch.py`` and by the end-to-end tests.  Everything listens on
127.0.0.1 on free ports, and every process started here is stopped (SIGTERM,
then SIGKILL) when its ``with`` block ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVICE = HERE / "service.py"
REPO = HERE.parent.parent
RULES = REPO / "dashboards" / "prometheus" / "scopetrace-alerts.rules.yml"

#: Starts the service with scopetrace installed by code instead of by
#: ``SCOPETRACE=1``: for an environment without the start-up hook.
LAUNCHER = (
    "import runpy, sys, scopetrace; scopetrace.install(); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def startup_hook_active(python: str = sys.executable) -> bool:
    """Whether ``SCOPETRACE=1`` alone turns scopetrace on in ``python``'s environment."""
    probe = subprocess.run(
        [python, "-c", "import sys; m = sys.modules.get('scopetrace'); "
         "print(bool(m and m.is_installed()))"],
        env={**os.environ, "SCOPETRACE": "1"}, capture_output=True, text=True, timeout=60,
    )
    return probe.stdout.strip() == "True"


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    # Generous: a service stopped with SIGTERM flushes its last spans and
    # metrics in its lifespan shutdown (service.flush_telemetry), and a busy
    # 2-core machine can take a while.
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class Service:
    """The flaky-500 service in a subprocess.

    ``activation``: ``"env"`` sets ``SCOPETRACE=1`` (the production way),
    ``"launcher"`` calls ``scopetrace.install()`` before running the service
    (for an environment without the start-up hook), ``"off"`` runs untraced.
    """

    def __init__(self, *, fixed: bool = False, activation: str = "env",
                 otlp_endpoint: str | None = None, latency: str = "random",
                 extra_env: dict[str, str] | None = None, log_path: Path | None = None,
                 port: int | None = None, metrics_port: int | None = None) -> None:
        self.fixed = fixed
        self.activation = activation
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OTEL_", "SCOPETRACE"))}
        env.update({
            "PYTHONUNBUFFERED": "1",
            # Every violation gets its span, however many per second.
            "SCOPETRACE_RATE_LIMIT": "1000000",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        })
        if activation == "env":
            env["SCOPETRACE"] = "1"
        if otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = otlp_endpoint.rstrip("/") + "/v1/traces"
        env.update(extra_env or {})
        self.env = env
        args = [str(SERVICE), "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                "--latency", latency]
        if fixed:
            args.append("--fixed")
        if activation == "launcher":
            self.argv = [sys.executable, "-c", LAUNCHER, *args]
        else:
            self.argv = [sys.executable, *args]
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="flaky500-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Service:
        log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=REPO)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log()}")
            try:
                if http_get(self.url + "/healthz", 1.0)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"service not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)


def run_load(url: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run load.py against ``url`` (the service's base URL) and return its JSON summary."""
    out = subprocess.run(
        [sys.executable, str(HERE / "load.py"), "--url", url.rstrip("/") + "/ask", "--json", *args],
        capture_output=True, text=True, timeout=timeout, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- Prometheus ------------------------------------------------------------------------


def find_prometheus() -> tuple[str, str] | None:
    """Paths of the prometheus and promtool binaries, or None."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    return (prometheus, promtool) if prometheus and promtool else None


def prometheus_config(targets: dict[str, str], interval: str = "1s",
                      rule_files: list[Path] | None = None) -> str:
    """A prometheus.yml scraping ``{job: "host:port"}``; JSON is valid YAML."""
    return json.dumps({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in (rule_files if rule_files is not None else [RULES])],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }, indent=2)


class Prometheus:
    """A Prometheus server on 127.0.0.1 with a throw-away storage directory."""

    def __init__(self, config: str, *, binary: str = "prometheus", port: int | None = None,
                 retention: str = "1h") -> None:
        self.binary = binary
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config
        self.retention = retention
        self.dir: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Prometheus:
        self.dir = tempfile.TemporaryDirectory(prefix="scopetrace-prometheus-")
        root = Path(self.dir.name)
        (root / "prometheus.yml").write_text(self.config)
        log = open(root / "prometheus.log", "wb")
        try:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={root / 'data'}",
                 f"--storage.tsdb.retention.time={self.retention}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=root,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                if http_get(self.url + "/-/ready", 1.0)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
        if self.dir is not None:
            self.dir.cleanup()
            self.dir = None

    def log(self) -> str:
        if self.dir is None:
            return ""
        try:
            return (Path(self.dir.name) / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises with Prometheus's error."""
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", 10.0)
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise RuntimeError(f"{path} {params}: HTTP {status}: {reply.get('error', body[:500])}")
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; returns the result vector."""
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, seconds: float = 60.0, step: str = "1s") -> list[dict[str, Any]]:
        end = time.time()
        return self.api("query_range", query=expr, start=end - seconds, end=end, step=step)["result"]

    def series(self, selector: str) -> list[dict[str, str]]:
        end = time.time()
        return self.api("series", **{"match[]": selector, "start": end - 3600, "end": end})

    def wait_for(self, expr: str, timeout: float) -> list[dict[str, Any]]:
        """Poll an instant query until it returns data (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() >= deadline:
                return result
            time.sleep(0.25)
