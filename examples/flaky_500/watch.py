"""Watch the flaky-500 story live: service + load + violation spans + Prometheus.

    python examples/flaky_500/watch.py                 # buggy service, 2 minutes of load
    python examples/flaky_500/watch.py --fixed         # the fix: no 500s, no violations
    python examples/flaky_500/watch.py --duration 0    # keep the service up, no load

It starts, all on 127.0.0.1:

* the service (``service.py``) with ``SCOPETRACE=1`` in its environment;
* an OTLP/HTTP trace sink (``otlp_sink.py``) printing each violation span, unless
  ``--otlp-endpoint`` sends the traces to your Collector, Tempo or Jaeger instead;
* a Prometheus server, if ``prometheus`` is installed (Debian: ``apt-get install
  prometheus``), scraping the service every 2 s with scopetrace's alert rules
  loaded: point Grafana's Prometheus data source at it and import
  ``dashboards/grafana/scopetrace-violations.json``;
* ``load.py`` for ``--duration`` seconds;

and prints a status line every few seconds until the load ends (or Ctrl-C).
Everything it started is stopped when it exits.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dashboards"))

import generate  # noqa: E402  (dashboards/generate.py: the Prometheus names)
import harness  # noqa: E402
from otlp_sink import TraceSink, describe  # noqa: E402

from scopetrace import semconv  # noqa: E402  (a tool around the service: it may)

VIOLATIONS = generate.VIOLATIONS
HTTP_5XX = generate.selector(generate.HTTP_REQUESTS, generate.FIVE_XX)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed", action="store_true", help="run the fixed variant")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds of load (0: none, keep running until Ctrl-C)")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--latency", choices=("random", "staggered"), default="random",
                        help="tool latencies (staggered: every buggy request fails)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=9464)
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--no-prometheus", action="store_true")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between status lines")
    parser.add_argument("--otlp-endpoint", default=None,
                        help="send traces here (e.g. http://127.0.0.1:4318) instead of the sink")
    args = parser.parse_args()

    activation = "env" if harness.startup_hook_active() else "launcher"
    if activation != "env":
        print("note: SCOPETRACE=1 does not activate scopetrace in this environment "
              "(no start-up hook); calling scopetrace.install() in a launcher instead")

    seen: list = []
    lock = threading.Lock()

    def on_spans(spans: list) -> None:
        with lock:
            for span in spans:
                if span.name == semconv.VIOLATION_SPAN:
                    seen.append(span)
                    if len(seen) <= 3:
                        print("  " + (describe(span) or span.name), flush=True)

    sink = None if args.otlp_endpoint else TraceSink(on_spans=on_spans).__enter__()
    endpoint = args.otlp_endpoint or sink.endpoint
    service = harness.Service(fixed=args.fixed, activation=activation, otlp_endpoint=endpoint,
                              latency=args.latency, port=args.port, metrics_port=args.metrics_port,
                              log_path=Path("flaky-500-service.log").resolve())
    prom = None
    load = None
    try:
        service.start()
        print(f"service ({'fixed' if args.fixed else 'buggy'}): {service.url}/ask   "
              f"metrics: {service.metrics_url}   log: {service.log_path}")
        print(f"traces: {endpoint}" + ("  (built-in sink: first violation spans shown below)"
                                      if sink else ""))
        found = None if args.no_prometheus else harness.find_prometheus()
        if found:
            config = harness.prometheus_config(
                {"flaky-500": f"127.0.0.1:{service.metrics_port}"}, interval="2s")
            prom = harness.Prometheus(config, binary=found[0], port=args.prometheus_port).start()
            graph = urllib.parse.urlencode({
                "g0.expr": f"sum(rate({VIOLATIONS}[30s]))", "g0.tab": "0",
                "g1.expr": f"sum(rate({HTTP_5XX}[30s]))", "g1.tab": "0",
            })
            print(f"prometheus: {prom.url}/graph?{graph}   alerts: {prom.url}/alerts")
        elif not args.no_prometheus:
            print("prometheus: not installed (apt-get install prometheus), skipping")

        if args.duration > 0:
            load = subprocess.Popen([sys.executable, str(harness.HERE / "load.py"),
                                     "--url", service.url + "/ask", "--duration",
                                     str(args.duration), "-c", str(args.concurrency)])
        start = time.monotonic()
        while load is None or load.poll() is None:
            time.sleep(args.interval)
            status = [f"[{time.monotonic() - start:5.0f}s]"]
            if sink:
                with lock:
                    status.append(f"violation spans: {len(seen)}")
            if prom:
                try:
                    v = prom.query(f"sum(rate({VIOLATIONS}[30s]))")
                    h = prom.query(f"sum(rate({HTTP_5XX}[30s]))")
                    alerts = prom.api("alerts")["alerts"]
                    status.append(
                        f"violations/s {float(v[0]['value'][1]) if v else 0:.2f}, "
                        f"5xx/s {float(h[0]['value'][1]) if h else 0:.2f}, alerts: "
                        + (", ".join(f"{a['labels']['alertname']}={a['state']}" for a in alerts)
                           or "none"))
                except Exception as exc:  # a status line must not end the demo
                    status.append(f"prometheus: {exc}")
            print(" | ".join(status), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if load is not None and load.poll() is None:
            load.terminate()
            load.wait(10)
        if prom is not None:
            prom.stop()
        service.stop()
        if sink is not None:
            # The service exports its last batch as it shuts down; on a busy
            # machine that can land late: count once the sink has gone quiet.
            deadline = time.monotonic() + 15.0
            count = -1
            while len(seen) != count and time.monotonic() < deadline:
                count = len(seen)
                time.sleep(1.0)
            sink.__exit__(None, None, None)
            print(f"violation spans received: {len(seen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
