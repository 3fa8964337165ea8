"""The Grafana dashboard, the Prometheus alert rules and the Collector configuration.

Structure: unique panel ids, non-overlapping grid positions, every data source
a template variable.  Names: every metric, label and span attribute queried is
derived from a constant (scopetrace.semconv, or the OpenTelemetry semantic
conventions for HTTP) through dashboards/generate.py's one sanitising function;
the committed files equal the generator's output.  End to end: a real
Prometheus (Debian's package) scrapes the flaky-500 example service under load
-- twice over: as it is (the culprit is the application's own code) and with
its buggy connection module installed as a distribution (the culprit is a
package) -- and every PromQL expression of the dashboard and of the rules
returns data; promtool accepts the rules.

Prometheus and promtool come from ``.ci/install-prometheus.sh``.  Without them
the tests that need them skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from scopetrace import semconv

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
EXAMPLE = ROOT / "examples" / "flaky_500"
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
NEEDED = ("yaml", "opentelemetry.semconv", "opentelemetry.exporter.prometheus",
          "opentelemetry.sdk", "starlette", "uvicorn", "httpx")


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def skip_or_fail(message: str) -> None:
    if IN_CI:
        pytest.fail(message + " (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def example_dependencies() -> None:
    missing = [m for m in NEEDED if _missing(m)]
    if missing:
        skip_or_fail(f"the example's dependencies are not installed (missing: {', '.join(missing)});"
                     " install them with: pip install -e '.[test,example]'")


@pytest.fixture(scope="module")
def gen():
    """dashboards/generate.py as a module."""
    spec = importlib.util.spec_from_file_location("scopetrace_dashboards_generate",
                                                  DASHBOARDS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard(gen) -> dict[str, Any]:
    return json.loads(gen.DASHBOARD_PATH.read_text())


@pytest.fixture(scope="module")
def rules(gen) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(gen.RULES_PATH.read_text())


def load_harness() -> Any:
    """examples/flaky_500/harness.py."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import harness
    finally:
        sys.path.remove(str(EXAMPLE))
    return harness


@pytest.fixture(scope="module")
def prometheus_binaries() -> tuple[str, str]:
    found = load_harness().find_prometheus()
    if found is None:
        skip_or_fail("prometheus/promtool not found on PATH; run .ci/install-prometheus.sh "
                     "(Debian package 'prometheus')")
    return found


# --- walking the dashboard --------------------------------------------------------------


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def targets(dashboard: dict[str, Any], ds_type: str) -> Iterator[tuple[dict, dict]]:
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            if ds.get("type") == ds_type:
                yield panel, target


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every (path, key, value) in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


# --- names -------------------------------------------------------------------------------


def constants(module: Any) -> list[str]:
    return [v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)]


def otel_http_constants() -> list[str]:
    from opentelemetry.semconv.attributes import http_attributes, service_attributes
    from opentelemetry.semconv.metrics import http_metrics

    return constants(http_attributes) + constants(http_metrics) + constants(service_attributes)


def allowed_prometheus_names(gen) -> set[str]:
    """Every Prometheus name that may appear: each constant through the one sanitiser."""
    names = {"job"}  # Prometheus's own target label (the service)
    for value in constants(semconv) + otel_http_constants():
        base = gen.sanitize(value)
        names.add(base)
        names.add(base + "_total")
        for unit in gen.UNIT_SUFFIXES.values():
            names.update(f"{base}_{unit}_{part}" for part in ("count", "sum", "bucket"))
    return names


#: The PromQL language itself (functions, aggregations, keywords) used here.
PROMQL_WORDS = {
    "sum", "count", "max", "min", "avg", "group", "topk", "bottomk", "by", "without",
    "rate", "increase", "irate", "max_over_time", "min_over_time", "clamp_max", "clamp_min",
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "label_replace", "label_values", "__name__",
}

GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "5s", "$job": ".*"}


def substitute(expr: str) -> str:
    """Replace Grafana's variables the way Grafana would, with values for the test."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def promql_identifiers(expr: str) -> set[str]:
    """Metric and label names in a PromQL expression (strings, durations and numbers removed)."""
    text = substitute(expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    text = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", text)
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))


def unknown_promql_names(gen, expr: str) -> set[str]:
    return promql_identifiers(expr) - PROMQL_WORDS - allowed_prometheus_names(gen)


def dashboard_promql(dashboard: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(where, expression, instant) for every Prometheus target and variable query."""
    found = []
    for panel, target in targets(dashboard, "prometheus"):
        found.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}",
                      target["expr"], bool(target.get("instant"))))
    return found


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((var["name"], query))
    return out


def rule_exprs(rules: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


# --- structure ------------------------------------------------------------------------------


def test_generated_files_equal_the_generators_output(gen):
    import yaml

    rendered = gen.render()
    assert gen.DASHBOARD_PATH.read_text() == rendered[gen.DASHBOARD_PATH], (
        "dashboards/grafana/*.json is stale: run python dashboards/generate.py")
    assert yaml.safe_load(gen.RULES_PATH.read_text()) == yaml.safe_load(rendered[gen.RULES_PATH]), (
        "dashboards/prometheus/*.rules.yml is stale: run python dashboards/generate.py")


def test_panel_ids_are_unique(dashboard):
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), ids
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_grid_positions_fit_and_do_not_overlap(dashboard):
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard):
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= 24, f"{panel['title']!r} is wider than the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_datasource_is_a_template_variable(dashboard):
    variables = {v["name"]: v["query"] for v in dashboard["templating"]["list"]
                 if v["type"] == "datasource"}
    assert set(variables.values()) == {"prometheus", "tempo"}
    seen = 0
    for path, key, value in walk(dashboard):
        if key != "datasource":
            continue
        if path.startswith(".annotations"):
            assert value["uid"] == "-- Grafana --"  # the built-in annotations
            continue
        seen += 1
        assert isinstance(value, dict), f"{path}: datasource must be a {{type, uid}} reference"
        match = re.fullmatch(r"\$\{(\w+)\}", value.get("uid", ""))
        assert match and match.group(1) in variables, f"{path}: uid {value.get('uid')!r}"
        assert variables[match.group(1)] == value["type"], f"{path}: type {value['type']!r}"
    assert seen > 10
    for panel in all_panels(dashboard):
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']!r} has no query"


def test_dashboard_has_the_panels_the_issue_asks_for(dashboard, gen):
    titles = {p["title"]: p for p in all_panels(dashboard)}
    exprs = " ".join(e for _, e, _ in dashboard_promql(dashboard))
    assert f"sum by ({gen.KIND})" in exprs and f"sum by ({gen.CAUSE})" in exprs
    assert f"sum by ({gen.JOB})" in exprs
    assert titles["Top opener sites"]["type"] == "table"
    assert titles["Top closer sites (recent traces)"]["type"] == "table"
    recent = titles["Recent violation traces"]
    query = recent["targets"][0]["query"]
    for key in (semconv.OPENER_TASK_NAME, semconv.OPENER_SITE, semconv.CLOSER_TASK_NAME,
                semconv.CLOSER_SITE):
        assert f"span.{key}" in query
    links = [prop["value"] for o in recent["fieldConfig"]["overrides"]
             for prop in o["properties"] if prop["id"] == "links"]
    assert links and "${__value.raw}" in links[0][0]["url"]
    row_titles = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert "Are our 500s this bug?" in row_titles
    beside = titles["HTTP 5xx beside violations"]["targets"]
    assert {gen.HTTP_REQUESTS in t["expr"] for t in beside} == {True, False}

    # Which library do we upgrade: violations by culprit package and version...
    assert "Which library do we upgrade?" in row_titles
    by_package = titles["Violation rate by culprit package and version"]
    assert by_package["type"] == "timeseries"
    [target] = by_package["targets"]
    assert target["expr"].startswith(f"sum by ({gen.PACKAGE}, {gen.PACKAGE_VERSION}) ")
    assert target["legendFormat"] == f"{{{{{gen.PACKAGE}}}}} {{{{{gen.PACKAGE_VERSION}}}}}"
    # ... the worst packages, libraries only, with their versions ...
    top = titles["Top culprit packages"]
    assert top["type"] == "table"
    assert all(f'{gen.PACKAGE}!=""' in t["expr"] for t in top["targets"])
    assert f"topk({gen.TOP_PACKAGES}, sum by ({gen.PACKAGE}, {gen.PACKAGE_VERSION})" in (
        top["targets"][0]["expr"])
    # ... and the line to fix, from the spans (the culprit site is not a label).
    sites = titles["Top culprit sites (recent traces)"]
    assert f"span.{semconv.CULPRIT_SITE}" in sites["targets"][0]["query"]


def test_rules_have_the_alerts_the_issue_asks_for(gen, rules):
    alerts = dict(rule_exprs(rules))
    assert set(alerts) == {"AnyioCancelScopeNewViolationSite", "AnyioCancelScopeNewCulpritPackage",
                           "AnyioCancelScopeViolationRateHigh",
                           "AnyioCancelScopeViolationsWithHttp5xx"}
    new_package = alerts["AnyioCancelScopeNewCulpritPackage"]
    # Like the new-site rule: present now, absent from the day before; libraries
    # only (the application's own new culprits are new opener sites).
    assert f"unless on ({gen.JOB}, {gen.PACKAGE})" in new_package
    assert f"[{gen.NEW_SITE_LOOKBACK}] offset {gen.NEW_SITE_OFFSET}" in new_package
    assert new_package.count(f'{gen.PACKAGE}!=""') == 2


# --- one source of truth for names ------------------------------------------------------------


def test_sanitize_names_like_the_otel_prometheus_exporter(gen):
    """The one sanitiser agrees with the real exporter on every name the dashboard uses."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
    from opentelemetry.semconv.metrics.http_metrics import HTTP_SERVER_REQUEST_DURATION
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    meter = provider.get_meter("test")
    meter.create_counter(semconv.VIOLATIONS_METRIC, unit="{violation}").add(
        1, {key: "x" for key in semconv.METRIC_ATTRIBUTES})
    # "s": the unit the semantic conventions give http.server.request.duration.
    meter.create_histogram(HTTP_SERVER_REQUEST_DURATION, unit="s").record(
        0.1, {HTTP_RESPONSE_STATUS_CODE: 500})
    text = generate_latest(registry).decode()
    provider.shutdown()

    assert re.search(rf"^{gen.VIOLATIONS}{{", text, re.M), text
    assert re.search(rf"^{gen.HTTP_REQUESTS}{{", text, re.M), text
    labels = (gen.KIND, gen.CAUSE, gen.BACKEND, gen.OPENER_SITE, gen.PACKAGE, gen.PACKAGE_VERSION)
    for label in labels:
        assert f'{label}="x"' in text
    assert f'{gen.HTTP_STATUS}="500"' in text
    # Exactly these labels: a new counter attribute must be a deliberate,
    # low-cardinality choice, reflected here and in the dashboards.
    assert {gen.sanitize(k) for k in semconv.METRIC_ATTRIBUTES} == set(labels)
    assert semconv.CULPRIT_SITE not in semconv.METRIC_ATTRIBUTES


def test_every_promql_name_is_derived_from_a_constant(gen, dashboard, rules):
    exprs = dashboard_promql(dashboard) + [(n, q, True) for n, q in variable_queries(dashboard)]
    exprs += [(name, expr, True) for name, expr in rule_exprs(rules)]
    assert len(exprs) > 15
    for where, expr, _ in exprs:
        assert not unknown_promql_names(gen, expr), f"{where}: {expr}"
    # ... and the check has teeth: a hand-typed near-miss is caught.
    assert unknown_promql_names(gen, "sum by (anyio_cancel_scope_violation_kinds) "
                                     "(rate(anyio_cancel_scope_violations_total[5m]))")
    assert unknown_promql_names(gen, 'sum(rate(http_server_duration_milliseconds_count[5m]))')


def test_promql_labels_are_the_counters_labels(gen, dashboard, rules):
    """Every label queried is one the series have: the violations counter's
    (semconv.METRIC_ATTRIBUTES), the HTTP status, or the job.  A derived name
    that is no label -- the culprit's site, say -- would give no data."""
    labels = {gen.sanitize(k) for k in semconv.METRIC_ATTRIBUTES} | {gen.HTTP_STATUS, gen.JOB}
    metrics = {gen.VIOLATIONS, gen.HTTP_REQUESTS}
    exprs = dashboard_promql(dashboard) + [(n, q, True) for n, q in variable_queries(dashboard)]
    exprs += [(name, expr, True) for name, expr in rule_exprs(rules)]
    for where, expr, _ in exprs:
        used = promql_identifiers(expr) - PROMQL_WORDS - metrics
        assert used <= labels, f"{where}: {sorted(used - labels)} in {expr}"
        # label_replace's label arguments are strings, invisible above.
        for label in re.findall(r'label_replace\(.*?, "(\w+)", "[^"]*", "(\w+)"', expr):
            assert set(label) <= labels, f"{where}: {label}"


def test_alert_annotations_use_derived_labels(gen, rules):
    for group in rules["groups"]:
        for rule in group["rules"]:
            for text in rule.get("annotations", {}).values():
                for label in re.findall(r"\$labels\.(\w+)", text):
                    assert label in allowed_prometheus_names(gen), (rule["alert"], label)


def test_every_traceql_name_is_a_constant(dashboard):
    from opentelemetry.semconv.attributes import service_attributes

    span_keys = set(constants(semconv))
    resource_keys = set(constants(service_attributes))
    queries = [t["query"] for _, t in targets(dashboard, "tempo")]
    assert len(queries) >= 2
    for query in queries:
        assert re.findall(r'\bname\s*=\s*"([^"]*)"', query) == [semconv.VIOLATION_SPAN], query
        for scope, key in re.findall(r"\b(span|resource)\.([A-Za-z0-9_.]+)", query):
            assert key in (span_keys if scope == "span" else resource_keys), (query, key)

    # Field names the Tempo tables rename, group or order by: span attribute keys
    # (constants) or the Tempo data source's own columns.
    tempo_columns = {"traceIdHidden", "traceService", "traceName", "spanID", "time", "name",
                     "duration", "spanID (count)"}
    for panel, _ in targets(dashboard, "tempo"):
        fields: set[str] = set()
        for t in panel.get("transformations", []):
            opts = t["options"]
            for key in ("renameByName", "indexByName", "excludeByName", "fields"):
                fields.update(opts.get(key, {}))
            fields.update(s["field"] for s in opts.get("sort", []))
        fields.update(o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"])
        assert fields, panel["title"]
        assert fields <= span_keys | tempo_columns, fields - span_keys - tempo_columns


def test_prometheus_table_columns_are_derived(gen, dashboard):
    allowed = allowed_prometheus_names(gen)
    frame_columns = {"Time", "Value", "Value #A", "Value #B", "Value #C"}
    for panel, _ in targets(dashboard, "prometheus"):
        for t in panel.get("transformations", []):
            opts = t["options"]
            for key in ("renameByName", "indexByName", "excludeByName"):
                assert set(opts.get(key, {})) <= allowed | frame_columns, (panel["title"], opts)


# --- the Collector configuration and Grafana provisioning ---------------------------------------


def test_collector_config_routes_otlp_to_traces_backend_and_prometheus(gen):
    import yaml

    config = yaml.safe_load((DASHBOARDS / "otel-collector.yaml").read_text())
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name}: {component} is not defined"
        assert pipeline["receivers"] == ["otlp"]
    assert all(e.split("/")[0] in ("otlp", "otlphttp") for e in pipelines["traces"]["exporters"])
    assert {"otlp/tempo", "otlp/jaeger"} <= set(config["exporters"])
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    # The job label must come from service.name (see the dashboard's service variable).
    assert config["exporters"]["prometheus"]["resource_to_telemetry_conversion"] == {"enabled": False}


def test_example_prometheus_config_and_grafana_provisioning():
    import yaml

    prom = yaml.safe_load((EXAMPLE / "prometheus.yml").read_text())
    rules = [(EXAMPLE / f).resolve() for f in prom["rule_files"]]
    assert rules == [(DASHBOARDS / "prometheus" / "scopetrace-alerts.rules.yml").resolve()]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["flaky-500"]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    assert jobs["otel-collector"]["honor_labels"] is True

    provisioning = DASHBOARDS / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "scopetrace.yaml").read_text())
    assert {d["type"] for d in sources["datasources"]} == {"prometheus", "tempo"}
    providers = yaml.safe_load((provisioning / "dashboards" / "scopetrace.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"


# --- against a real Prometheus ----------------------------------------------------------------


def test_promtool_accepts_the_rules(gen, rules, prometheus_binaries):
    _, promtool = prometheus_binaries
    out = subprocess.run([promtool, "check", "rules", str(gen.RULES_PATH)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_exprs(rules))} rules found" in out.stdout


#: The distribution the example's connections module is installed as, for the
#: run whose culprit is a package.
LIBRARY = ("flaky500-connections", "0.9.0")
APP_JOB, LIBRARY_JOB = "flaky-500", "flaky-500-library"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def install_connections_as_a_library(root: Path) -> Path:
    """A site directory holding the example's own ``connections.py``, unchanged,
    as the installed distribution LIBRARY, laid out as pip installs a wheel
    (``*.dist-info`` with METADATA, top_level.txt and a RECORD with hashes).

    This is seed 003's real shape -- the shared, ref-counted connection lives in
    a dependency (pydantic-ai's MCP client), not in the application -- and
    scopetrace, not the test, works out the culprit's package from it.
    """
    site = root / "site-packages"
    site.mkdir()
    name, version = LIBRARY
    meta = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        "connections.py": (EXAMPLE / "connections.py").read_bytes(),
        f"{meta}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{meta}/top_level.txt": b"connections\n",
        f"{meta}/INSTALLER": b"pip\n",
    }
    record = [f"{rel},{_record_hash(data)},{len(data)}" for rel, data in files.items()]
    files[f"{meta}/RECORD"] = ("\n".join([*record, f"{meta}/RECORD,,"]) + "\n").encode()
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    return site


def import_connections_from(service: Any, site: Path, harness: Any) -> None:
    """Start ``service`` with its ``connections`` module imported from ``site``.

    service.py puts its own directory first on sys.path and imports
    ``connections``; importing it from ``site`` beforehand, after activating
    scopetrace as the service's activation does, is all that differs.
    """
    script = service.argv.index(str(harness.SERVICE))
    install = "import scopetrace; scopetrace.install(); " if service.activation == "launcher" else ""
    preload = (f"import runpy, sys; {install}sys.path.insert(0, {str(site)!r}); "
               "import connections; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    service.argv = [sys.executable, "-c", preload, *service.argv[script:]]


def test_every_query_returns_data_from_a_real_prometheus(gen, dashboard, rules, prometheus_binaries,
                                                         tmp_path):
    """Prometheus scrapes the example under load; every dashboard and rule query has data.

    Two services, two jobs: APP_JOB is the example as it is (the culprit of its
    violations is the application's own code: no package); LIBRARY_JOB runs the
    same code with its connection module installed as a distribution (the
    culprit is that package), so the per-package panels and the new-package
    alert are proven on series scopetrace produced, not on a hand-made point.
    """
    prometheus_bin, _ = prometheus_binaries
    harness = load_harness()
    activation = "env" if harness.startup_hook_active() else "launcher"
    print(f"\nscopetrace activation used by the Prometheus test: {activation}")
    site = install_connections_as_a_library(tmp_path)

    app = harness.Service(fixed=False, activation=activation, latency="staggered")
    library = harness.Service(fixed=False, activation=activation, latency="staggered")
    import_connections_from(library, site, harness)
    jobs = {APP_JOB: app, LIBRARY_JOB: library}
    with app, library:
        config = harness.prometheus_config(
            {job: f"127.0.0.1:{s.metrics_port}" for job, s in jobs.items()},
            interval="1s", rule_files=[gen.RULES_PATH])
        with harness.Prometheus(config, binary=prometheus_bin) as prom:
            # Load across several scrapes, so every rate() has increases to see.
            with ThreadPoolExecutor(len(jobs)) as pool:
                running = {job: pool.submit(harness.run_load, s.url, "--duration", "6", "-c", "6")
                           for job, s in jobs.items()}
                loads = {job: future.result() for job, future in running.items()}
            for load in loads.values():
                assert load["500"] > 0 and load["500"] == load["requests"], loads

            # Wait for a scrape that holds the final counts: one violation per 500.
            totals = {
                "violations": f"sum by ({gen.JOB}) ({gen.VIOLATIONS})",
                "HTTP 500": f'sum by ({gen.JOB}) ({gen.HTTP_REQUESTS}{{{gen.HTTP_STATUS}="500"}})',
            }
            expected = {name: {job: loads[job]["500"] for job in jobs} for name in totals}

            def counts() -> dict[str, dict[str, float]]:
                return {name: {r["metric"][gen.JOB]: float(r["value"][1]) for r in prom.query(q)}
                        for name, q in totals.items()}

            deadline = time.monotonic() + 15
            while (seen := counts()) != expected:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            assert seen == expected, (seen, loads)

            # scopetrace named the culprits: no package for the application's
            # code (an empty label, which Prometheus stores as none), the
            # distribution and its version for the installed module.
            culprits = {
                (r["metric"][gen.JOB], r["metric"].get(gen.PACKAGE, ""),
                 r["metric"].get(gen.PACKAGE_VERSION, ""))
                for r in prom.query(f"group by ({gen.JOB}, {gen.PACKAGE}, {gen.PACKAGE_VERSION}) "
                                    f"({gen.VIOLATIONS})")
            }
            assert culprits == {(APP_JOB, "", ""), (LIBRARY_JOB, *LIBRARY)}, culprits

            empty = []
            results: dict[str, list[dict[str, Any]]] = {}
            for where, expr, instant in dashboard_promql(dashboard):
                query = substitute(expr)
                if instant:
                    data = prom.query(query)
                else:
                    data = [s for s in prom.query_range(query, seconds=60)
                            if any(v[1] != "NaN" for v in s["values"])]
                results[where] = data
                if not data:
                    empty.append(f"{where}: {query}")
            for name, query in variable_queries(dashboard):
                selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", query).groups()
                values = prom.api(f"label/{label}/values", **{"match[]": selector})
                if not set(jobs) <= set(values):
                    empty.append(f"variable {name}: {query} -> {values}")
            for name, expr in rule_exprs(rules):
                if not prom.query(expr):
                    empty.append(f"rule {name}: {expr}")
            assert not empty, "queries without data:\n" + "\n".join(empty)
            print(f"PromQL expressions with data: {len(results)} dashboard targets, "
                  f"{len(variable_queries(dashboard))} variable, {len(rule_exprs(rules))} rules")

            # The per-package panels say whose code it is.
            def panel(title: str, ref: str = "A") -> list[dict[str, Any]]:
                [data] = [d for w, d in results.items() if f"{title!r} {ref}" in w]
                return data

            by_package = {(s["metric"][gen.PACKAGE], s["metric"].get(gen.PACKAGE_VERSION, ""))
                          for s in panel("Violation rate by culprit package and version")}
            assert by_package == {(gen.APPLICATION, ""), LIBRARY}, by_package
            for ref in "ABC":  # violations, services, opener sites: the library alone
                rows = panel("Top culprit packages", ref)
                assert [(r["metric"][gen.PACKAGE], r["metric"][gen.PACKAGE_VERSION])
                        for r in rows] == [LIBRARY], (ref, rows)
            assert [float(r["value"][1]) for r in panel("Top culprit packages", "B")] == [1]

            # The rules load and evaluate cleanly, and fire (or wait out their 'for').
            # A rule's state is "firing" once any one job's alert fires; the other
            # job's may come an evaluation later, so wait for each job's alert
            # (the wait once ended on the rule's state, and one job was missing).
            want_firing = {"AnyioCancelScopeNewViolationSite": set(jobs),
                           "AnyioCancelScopeNewCulpritPackage": {LIBRARY_JOB}}
            states: dict[str, str] = {}
            alerts: list[dict[str, Any]] = []

            def fired(alertname: str) -> dict[str, dict[str, str]]:
                return {a["labels"]["job"]: a["labels"] for a in alerts
                        if a["labels"]["alertname"] == alertname and a["state"] == "firing"}

            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                groups = prom.api("rules", type="alert")["groups"]
                loaded = [r for g in groups for r in g["rules"]]
                states = {r["name"]: r["state"] for r in loaded}
                alerts = prom.api("alerts")["alerts"]
                if all(set(fired(name)) >= want for name, want in want_firing.items()) and all(
                        s in ("pending", "firing") for s in states.values()):
                    break
                time.sleep(0.5)
            assert {r["name"] for r in loaded} == {name for name, _ in rule_exprs(rules)}
            assert all(r["health"] == "ok" for r in loaded), loaded
            for name in want_firing:
                assert states[name] == "firing", states
            assert states["AnyioCancelScopeViolationRateHigh"] == "pending", states
            assert states["AnyioCancelScopeViolationsWithHttp5xx"] == "pending", states

            new_sites = fired("AnyioCancelScopeNewViolationSite")
            assert set(new_sites) == set(jobs), new_sites
            for job, labels in new_sites.items():
                assert "connections.py:" in labels[gen.OPENER_SITE]
                assert "__aenter__" in labels[gen.OPENER_SITE]
            # The library run's scopes were entered in the installed copy.
            assert new_sites[LIBRARY_JOB][gen.OPENER_SITE].startswith(str(site.resolve()))
            # A new culprit package: the library's, not the application's code.
            new_packages = fired("AnyioCancelScopeNewCulpritPackage")
            assert set(new_packages) == {LIBRARY_JOB}, new_packages
            labels = new_packages[LIBRARY_JOB]
            assert (labels[gen.PACKAGE], labels[gen.PACKAGE_VERSION]) == LIBRARY, labels
