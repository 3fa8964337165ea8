"""Generate the Grafana dashboard and the Prometheus alert rules from scopetrace's names.

Every metric, label and span-attribute name below is derived from a constant
(``scopetrace.semconv`` for scopetrace's own names, the OpenTelemetry
semantic-conventions package for the standard HTTP ones) through
:func:`sanitize`, the one function that maps an OpenTelemetry name to the
Prometheus name the OTel Prometheus exporter (and the Collector's
``prometheus`` exporter) gives it.  No name is typed twice by hand.

    python dashboards/generate.py          # rewrite the generated files
    python dashboards/generate.py --check  # exit 1 if they are out of date

Generated files (commit them; the tests check they equal this script's output):

* ``dashboards/grafana/scopetrace-violations.json`` — the Grafana dashboard;
* ``dashboards/prometheus/scopetrace-alerts.rules.yml`` — the alerting rules.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.semconv.attributes import http_attributes
from opentelemetry.semconv.metrics import http_metrics

from scopetrace import semconv

HERE = Path(__file__).resolve().parent
DASHBOARD_PATH = HERE / "grafana" / "scopetrace-violations.json"
RULES_PATH = HERE / "prometheus" / "scopetrace-alerts.rules.yml"

DASHBOARD_UID = "scopetrace-violations"

# --- names ----------------------------------------------------------------------


def sanitize(name: str) -> str:
    """An OpenTelemetry metric name or attribute key as a Prometheus name.

    Every run of characters Prometheus does not allow becomes one ``_``:
    ``anyio.cancel_scope.violation.kind`` -> ``anyio_cancel_scope_violation_kind``.
    """
    name = re.sub(r"[^A-Za-z0-9]+", "_", name)
    return "_" + name if name[:1].isdigit() else name


#: OpenTelemetry units that become a Prometheus name suffix (the exporters'
#: table; annotations such as ``{violation}`` add nothing).
UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


def counter_series(name: str) -> str:
    """The series of an OTel counter whose unit is an annotation (``{violation}``)."""
    return sanitize(name) + "_total"


def histogram_series(name: str, unit: str, part: str) -> str:
    """``_count``/``_sum``/``_bucket`` series of an OTel histogram."""
    return f"{sanitize(name)}_{UNIT_SUFFIXES[unit]}_{part}"


#: scopetrace's counter, and its labels (semconv.METRIC_ATTRIBUTES).
VIOLATIONS = counter_series(semconv.VIOLATIONS_METRIC)
KIND = sanitize(semconv.VIOLATION_KIND)
CAUSE = sanitize(semconv.VIOLATION_CAUSE)
BACKEND = sanitize(semconv.BACKEND)
OPENER_SITE = sanitize(semconv.OPENER_SITE)
#: The installed distribution that owns the culprit frame, and its version:
#: empty for the application's own code (Prometheus stores an empty label as
#: no label at all).  The culprit's *site* is a span attribute only: one label
#: value per line of code would make the counter high-cardinality.
PACKAGE = sanitize(semconv.CULPRIT_PACKAGE)
PACKAGE_VERSION = sanitize(semconv.CULPRIT_PACKAGE_VERSION)
#: How the dashboard shows the empty package (as ``scopetrace report`` does).
APPLICATION = "(application)"
#: The stable HTTP server metric (semantic conventions: histogram, unit "s").
HTTP_REQUESTS = histogram_series(http_metrics.HTTP_SERVER_REQUEST_DURATION, "s", "count")
HTTP_STATUS = sanitize(http_attributes.HTTP_RESPONSE_STATUS_CODE)
#: Prometheus's own target label.  A directly scraped service gets its scrape
#: job's name; through the Collector's prometheus exporter (scraped with
#: honor_labels) it is [service.namespace/]service.name.
JOB = "job"

#: Alert thresholds and windows.
RATE_THRESHOLD = 0.05  # violations per second, per service (3 a minute)
RATE_WINDOW = "5m"
RATE_FOR = "5m"
NEW_SITE_LOOKBACK = "1d"
NEW_SITE_OFFSET = "15m"
#: How many culprit packages the "which library" table lists.
TOP_PACKAGES = 20

# --- PromQL -----------------------------------------------------------------------


def selector(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


SERVICE = f'{JOB}=~"$job"'
FIVE_XX = f'{HTTP_STATUS}=~"5.."'
IN_A_LIBRARY = f'{PACKAGE}!=""'
V = selector(VIOLATIONS, SERVICE)
V_LIBRARY = selector(VIOLATIONS, SERVICE, IN_A_LIBRARY)
H5 = selector(HTTP_REQUESTS, SERVICE, FIVE_XX)


def rate(series: str, window: str = "$__rate_interval") -> str:
    return f"rate({series}[{window}])"


def increase(series: str, window: str = "$__range") -> str:
    return f"increase({series}[{window}])"


def named_application(vector: str) -> str:
    """``vector`` with the empty culprit package (the application's own code)
    shown as APPLICATION: legends and tables then say whose code it is."""
    return f'label_replace({vector}, "{PACKAGE}", "{APPLICATION}", "{PACKAGE}", "")'


# --- Grafana building blocks -----------------------------------------------------

PROMETHEUS = {"type": "prometheus", "uid": "${prometheus}"}
TEMPO = {"type": "tempo", "uid": "${tempo}"}


def prom(expr: str, ref: str = "A", legend: str = "__auto", *, instant: bool = False,
         table: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": PROMETHEUS,
        "refId": ref,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
    }
    if table:
        target["format"] = "table"
    return target


def traceql(query: str, limit: int) -> dict[str, Any]:
    return {
        "datasource": TEMPO,
        "refId": "A",
        "queryType": "traceql",
        "query": query,
        "limit": limit,
        "spss": 3,
        "tableType": "spans",
    }


def violation_spans(*attributes: str) -> str:
    """TraceQL: the violation spans, with the given span attributes as columns."""
    columns = ", ".join(f"span.{key}" for key in attributes)
    return f'{{ name = "{semconv.VIOLATION_SPAN}" }} | select({columns})'


def grid(x: int, y: int, w: int, h: int) -> dict[str, int]:
    return {"x": x, "y": y, "w": w, "h": h}


def row(title: str, y: int) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": grid(0, y, 24, 1)}


def stat(title: str, description: str, pos: dict[str, int], target: dict[str, Any], *,
         unit: str = "short", red_at: float = 1) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "gridPos": pos,
        "targets": [target],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                **({} if unit == "short" else {"decimals": 2}),
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "red", "value": red_at}],
                },
                "color": {"mode": "thresholds"},
                "noValue": "0",
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
    }


def timeseries(title: str, description: str, pos: dict[str, int], targets: list[dict[str, Any]],
               *, stacked: bool = True, overrides: list[Any] | None = None) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "gridPos": pos,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": "short",
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 20 if stacked else 0,
                    "showPoints": "never",
                    "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
                },
            },
            "overrides": overrides or [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def table(title: str, description: str, pos: dict[str, int], datasource: dict[str, str],
          targets: list[dict[str, Any]], transformations: list[dict[str, Any]],
          overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": datasource,
        "gridPos": pos,
        "targets": targets,
        "transformations": transformations,
        "fieldConfig": {
            "defaults": {"custom": {"align": "auto", "filterable": True}},
            "overrides": overrides or [],
        },
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    }


def rename(name: str, display: str, *extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "displayName", "value": display}, *extra],
    }


#: Opens the trace of a row in Explore (the Span ID column also links there).
TRACE_LINK = (
    "/explore?schemaVersion=1&orgId=1&panes="
    '{"trace":{"datasource":"${tempo}","queries":[{"refId":"A",'
    '"datasource":{"type":"tempo","uid":"${tempo}"},"queryType":"traceql",'
    '"query":"${__value.raw}"}],"range":{"from":"now-1h","to":"now"}}}'
)

# --- the dashboard ----------------------------------------------------------------


def panels() -> list[dict[str, Any]]:
    p: list[dict[str, Any]] = []

    p.append(row("Overview", 0))
    p.append(stat(
        "Violations in range",
        "Cancel scopes exited by the wrong task or out of order, over the dashboard's "
        "time range (from the anyio.cancel_scope.violations counter).",
        grid(0, 1, 6, 4),
        prom(f"sum({increase(V)})", instant=True),
    ))
    p.append(stat(
        "Violations / s now",
        "Current violation rate over the selected services.",
        grid(6, 1, 6, 4),
        prom(f"sum({rate(V)})"),
        red_at=0.001,
    ))
    p.append(stat(
        "Distinct opener sites",
        "How many different code locations entered a scope that was later exited by "
        "the wrong task: each is one bug to fix.",
        grid(12, 1, 6, 4),
        prom(f"count(group by ({OPENER_SITE}) ({V}))", instant=True),
    ))
    p.append(stat(
        "5xx matched by violations",
        "Violations per HTTP 5xx response over the range, capped at 100%. Near 100% "
        "means (nearly) every 5xx coincides with a violation: your 500s are most "
        "likely this bug. Near 0% means they are something else.",
        grid(18, 1, 6, 4),
        prom(f"clamp_max(sum({increase(V)}) / sum({increase(H5)}), 1)", instant=True),
        unit="percentunit",
        red_at=0.5,
    ))

    p.append(row("Violations over time", 5))
    p.append(timeseries(
        "Violation rate by kind",
        f"wrong_task: exited by another task than the one that entered it; "
        f"not_innermost: exited while a scope entered later in the same task was "
        f"still open. Label: {KIND}.",
        grid(0, 6, 12, 8),
        [prom(f"sum by ({KIND}) ({rate(V)})", legend=f"{{{{{KIND}}}}}")],
    ))
    p.append(timeseries(
        "Violation rate by cause",
        "Likely cause, as scopetrace classified it: sibling_task (a sibling in the "
        "same gather()/task group closed it: shared connections), opener_finished, "
        "asyncgen_finalizer (an async generator closed by the event loop), misnested.",
        grid(12, 6, 12, 8),
        [prom(f"sum by ({CAUSE}) ({rate(V)})", legend=f"{{{{{CAUSE}}}}}")],
    ))
    p.append(timeseries(
        "Violations by service",
        "Violation rate per service (the Prometheus job label).",
        grid(0, 14, 12, 8),
        [prom(f"sum by ({JOB}) ({rate(V)})", legend=f"{{{{{JOB}}}}}")],
    ))
    p.append(timeseries(
        "Violations by backend",
        "anyio backend the violating scope ran on (asyncio or trio).",
        grid(12, 14, 12, 8),
        [prom(f"sum by ({BACKEND}) ({rate(V)})", legend=f"{{{{{BACKEND}}}}}")],
    ))

    p.append(row("Where: opener and closer sites", 22))
    p.append(table(
        "Top opener sites",
        "Where the violating scopes were entered (first frame outside anyio and "
        "scopetrace), with kind and cause, over the range. From the metric: exact "
        "counts, all violations.",
        grid(0, 23, 12, 9),
        PROMETHEUS,
        [prom(
            f"topk(20, sum by ({JOB}, {OPENER_SITE}, {KIND}, {CAUSE}) ({increase(V)}) > 0)",
            instant=True, table=True,
        )],
        [
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "indexByName": {OPENER_SITE: 0, "Value": 1, KIND: 2, CAUSE: 3, JOB: 4},
                "renameByName": {OPENER_SITE: "opener site", "Value": "violations",
                                 KIND: "kind", CAUSE: "cause", JOB: "service"},
            }},
            {"id": "sortBy", "options": {"sort": [{"field": "violations", "desc": True}]}},
        ],
        [{"matcher": {"id": "byName", "options": "violations"},
          "properties": [{"id": "decimals", "value": 0}]}],
    ))
    p.append(table(
        "Top closer sites (recent traces)",
        "Where the violating scopes were exited, paired with where they were entered, "
        "counted over the most recent violation spans in Tempo (the closer site is a "
        "span attribute, not a metric label).",
        grid(12, 23, 12, 9),
        TEMPO,
        [traceql(violation_spans(semconv.CLOSER_SITE, semconv.OPENER_SITE), limit=500)],
        [
            {"id": "groupBy", "options": {"fields": {
                semconv.CLOSER_SITE: {"operation": "groupby", "aggregations": []},
                semconv.OPENER_SITE: {"operation": "groupby", "aggregations": []},
                "spanID": {"operation": "aggregate", "aggregations": ["count"]},
            }}},
            {"id": "sortBy", "options": {"sort": [{"field": "spanID (count)", "desc": True}]}},
            {"id": "organize", "options": {
                "renameByName": {semconv.CLOSER_SITE: "closer site",
                                 semconv.OPENER_SITE: "opener site",
                                 "spanID (count)": "violation spans"},
            }},
        ],
    ))

    p.append(row("Which library do we upgrade?", 32))
    p.append(timeseries(
        "Violation rate by culprit package and version",
        "Whose code split the scope's lifetime across tasks (the culprit: the frame a "
        "fix has to change), by the installed distribution that owns it and its "
        f"version. {APPLICATION}: the application's own code. Labels: {PACKAGE}, "
        f"{PACKAGE_VERSION}.",
        grid(0, 33, 12, 9),
        [prom(f"sum by ({PACKAGE}, {PACKAGE_VERSION}) ({named_application(rate(V))})",
              legend=f"{{{{{PACKAGE}}}}} {{{{{PACKAGE_VERSION}}}}}")],
    ))
    p.append(table(
        "Top culprit packages",
        "Installed distributions named as the culprit of violations over the range, "
        "worst first, with the version that did it: upgrade those that have a fixed "
        f"release (the {semconv.ADVICE} attribute of the violation spans says so when "
        "scopetrace knows the bug), or work around them. Services and opener sites: "
        "how widespread. The application's own code is not listed: see Top opener "
        "sites.",
        grid(12, 33, 12, 9),
        PROMETHEUS,
        [
            prom(f"topk({TOP_PACKAGES}, sum by ({PACKAGE}, {PACKAGE_VERSION}) "
                 f"({increase(V_LIBRARY)}) > 0)", "A", instant=True, table=True),
            prom(f"count by ({PACKAGE}, {PACKAGE_VERSION}) "
                 f"(sum by ({JOB}, {PACKAGE}, {PACKAGE_VERSION}) ({increase(V_LIBRARY)}) > 0)",
                 "B", instant=True, table=True),
            prom(f"count by ({PACKAGE}, {PACKAGE_VERSION}) "
                 f"(sum by ({OPENER_SITE}, {PACKAGE}, {PACKAGE_VERSION}) "
                 f"({increase(V_LIBRARY)}) > 0)",
                 "C", instant=True, table=True),
        ],
        [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "indexByName": {PACKAGE: 0, PACKAGE_VERSION: 1, "Value #A": 2,
                                "Value #B": 3, "Value #C": 4},
                "renameByName": {PACKAGE: "package", PACKAGE_VERSION: "version",
                                 "Value #A": "violations", "Value #B": "services",
                                 "Value #C": "opener sites"},
            }},
            {"id": "sortBy", "options": {"sort": [{"field": "violations", "desc": True}]}},
        ],
        [{"matcher": {"id": "byRegexp", "options": "violations|services|opener sites"},
          "properties": [{"id": "decimals", "value": 0}]}],
    ))
    p.append(table(
        "Top culprit sites (recent traces)",
        "The line of code to fix, with the package and version it belongs to (empty: "
        "the application's own code), counted over the most recent violation spans in "
        "Tempo (the culprit site is a span attribute, not a metric label).",
        grid(0, 42, 24, 8),
        TEMPO,
        [traceql(violation_spans(semconv.CULPRIT_SITE, semconv.CULPRIT_PACKAGE,
                                 semconv.CULPRIT_PACKAGE_VERSION), limit=500)],
        [
            {"id": "groupBy", "options": {"fields": {
                semconv.CULPRIT_SITE: {"operation": "groupby", "aggregations": []},
                semconv.CULPRIT_PACKAGE: {"operation": "groupby", "aggregations": []},
                semconv.CULPRIT_PACKAGE_VERSION: {"operation": "groupby", "aggregations": []},
                "spanID": {"operation": "aggregate", "aggregations": ["count"]},
            }}},
            {"id": "sortBy", "options": {"sort": [{"field": "spanID (count)", "desc": True}]}},
            {"id": "organize", "options": {
                "renameByName": {semconv.CULPRIT_SITE: "culprit site",
                                 semconv.CULPRIT_PACKAGE: "package",
                                 semconv.CULPRIT_PACKAGE_VERSION: "version",
                                 "spanID (count)": "violation spans"},
            }},
        ],
    ))

    p.append(row("Recent violation traces", 50))
    p.append(table(
        "Recent violation traces",
        f"The latest {semconv.VIOLATION_SPAN} spans: which task entered the scope and "
        "where, which task exited it and where. Click a Trace ID (or Span ID) to open "
        "the trace: the violation span sits under the request that failed.",
        grid(0, 51, 24, 10),
        TEMPO,
        [traceql(violation_spans(
            semconv.VIOLATION_KIND, semconv.VIOLATION_CAUSE,
            semconv.OPENER_TASK_NAME, semconv.OPENER_SITE,
            semconv.CLOSER_TASK_NAME, semconv.CLOSER_SITE,
        ), limit=50)],
        [{"id": "organize", "options": {"indexByName": {
            "time": 0, "traceIdHidden": 1, "traceService": 2,
            semconv.OPENER_TASK_NAME: 3, semconv.OPENER_SITE: 4,
            semconv.CLOSER_TASK_NAME: 5, semconv.CLOSER_SITE: 6,
            semconv.VIOLATION_KIND: 7, semconv.VIOLATION_CAUSE: 8,
        }}}],
        [
            rename("traceIdHidden", "Trace ID",
                   {"id": "custom.hidden", "value": False},
                   {"id": "links", "value": [{"title": "Open trace ${__value.raw}",
                                              "url": TRACE_LINK}]}),
            rename(semconv.OPENER_TASK_NAME, "opener task"),
            rename(semconv.OPENER_SITE, "opener site"),
            rename(semconv.CLOSER_TASK_NAME, "closer task"),
            rename(semconv.CLOSER_SITE, "closer site"),
            rename(semconv.VIOLATION_KIND, "kind"),
            rename(semconv.VIOLATION_CAUSE, "cause"),
        ],
    ))

    p.append(row("Are our 500s this bug?", 61))
    p.append(timeseries(
        "HTTP 5xx beside violations",
        "HTTP 5xx responses per second (OpenTelemetry HTTP server metric "
        f"{http_metrics.HTTP_SERVER_REQUEST_DURATION}, stable semantic conventions) and "
        "cancel-scope violations per second. Lines that move together answer the "
        "question.",
        grid(0, 62, 16, 8),
        [
            prom(f"sum({rate(H5)})", "A", "HTTP 5xx / s"),
            prom(f"sum({rate(V)})", "B", "violations / s"),
        ],
        stacked=False,
    ))
    p.append(stat(
        "5xx matched by violations, now",
        "Violation rate divided by 5xx rate, capped at 100%.",
        grid(16, 62, 8, 8),
        prom(f"clamp_max(sum({rate(V)}) / sum({rate(H5)}), 1)"),
        unit="percentunit",
        red_at=0.5,
    ))
    p.append(table(
        "Per service: 5xx and violations",
        "Over the range, per service: HTTP 5xx responses, violations, and their ratio.",
        grid(0, 70, 24, 7),
        PROMETHEUS,
        [
            prom(f"sum by ({JOB}) ({increase(H5)})", "A", instant=True, table=True),
            prom(f"sum by ({JOB}) ({increase(V)})", "B", instant=True, table=True),
            prom(
                f"clamp_max(sum by ({JOB}) ({increase(V)}) / sum by ({JOB}) ({increase(H5)}), 1)",
                "C", instant=True, table=True,
            ),
        ],
        [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "renameByName": {JOB: "service", "Value #A": "HTTP 5xx",
                                 "Value #B": "violations", "Value #C": "5xx matched"},
            }},
        ],
        [
            {"matcher": {"id": "byName", "options": "5xx matched"},
             "properties": [{"id": "unit", "value": "percentunit"},
                            {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                            {"id": "thresholds", "value": {"mode": "absolute", "steps": [
                                {"color": "green", "value": None},
                                {"color": "red", "value": 0.5}]}}]},
            {"matcher": {"id": "byRegexp", "options": "HTTP 5xx|violations"},
             "properties": [{"id": "decimals", "value": 0}]},
        ],
    ))

    for number, panel in enumerate(p, start=1):
        panel["id"] = number
    return p


def templating() -> list[dict[str, Any]]:
    return [
        {
            "name": "prometheus", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
            "regex": "", "includeAll": False, "multi": False, "options": [],
        },
        {
            "name": "tempo", "label": "Tempo", "type": "datasource",
            "query": "tempo", "current": {}, "hide": 0, "refresh": 1,
            "regex": "", "includeAll": False, "multi": False, "options": [],
        },
        {
            "name": "job", "label": "Service (job)", "type": "query",
            "datasource": PROMETHEUS,
            "definition": f'label_values({{__name__=~"{VIOLATIONS}|{HTTP_REQUESTS}"}}, {JOB})',
            "query": {
                "query": f'label_values({{__name__=~"{VIOLATIONS}|{HTTP_REQUESTS}"}}, {JOB})',
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
            },
            "includeAll": True, "allValue": ".*", "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": [],
        },
    ]


def dashboard() -> dict[str, Any]:
    return {
        "uid": DASHBOARD_UID,
        "title": "scopetrace: anyio cancel scope violations",
        "description": (
            "Cancel scopes exited by the wrong task (or out of nesting order), as reported "
            "by scopetrace through OpenTelemetry: rates, sites, traces, and whether they "
            "explain your HTTP 5xx. Generated by dashboards/generate.py."
        ),
        "tags": ["scopetrace", "anyio", "opentelemetry"],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": {"list": templating()},
        "panels": panels(),
    }


# --- alert rules ---------------------------------------------------------------------


def rules() -> dict[str, Any]:
    v = VIOLATIONS
    h5 = selector(HTTP_REQUESTS, FIVE_XX)
    site = f"{{{{ $labels.{OPENER_SITE} }}}}"
    package = f"{{{{ $labels.{PACKAGE} }}}}"
    version = f"{{{{ $labels.{PACKAGE_VERSION} }}}}"
    v_library = selector(VIOLATIONS, IN_A_LIBRARY)
    service = f"{{{{ $labels.{JOB} }}}}"
    return {"groups": [{
        "name": "scopetrace",
        "rules": [
            {
                "alert": "AnyioCancelScopeNewViolationSite",
                "expr": (
                    f"group by ({JOB}, {OPENER_SITE}) ({v})\n"
                    f"unless\n"
                    f"group by ({JOB}, {OPENER_SITE}) "
                    f"(max_over_time({v}[{NEW_SITE_LOOKBACK}] offset {NEW_SITE_OFFSET}))\n"
                ),
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": f"New anyio cancel-scope violation site in {service}",
                    "description": (
                        f"A cancel scope entered at {site} was exited by another task "
                        f"(or out of order), and that site had no violation in the "
                        f"{NEW_SITE_LOOKBACK} before. See the {semconv.VIOLATION_SPAN} spans "
                        f"of {service} for the task that closed it."
                    ),
                },
            },
            {
                "alert": "AnyioCancelScopeNewCulpritPackage",
                "expr": (
                    f"group by ({JOB}, {PACKAGE}, {PACKAGE_VERSION}) ({v_library})\n"
                    f"unless on ({JOB}, {PACKAGE})\n"
                    f"group by ({JOB}, {PACKAGE}) "
                    f"(max_over_time({v_library}[{NEW_SITE_LOOKBACK}] offset {NEW_SITE_OFFSET}))\n"
                ),
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": f"{package} is newly the culprit of cancel-scope violations in {service}",
                    "description": (
                        f"Violations in {service} name code of the installed package {package} "
                        f"{version} as the culprit (the code a fix has to change), and no "
                        f"violation in the {NEW_SITE_LOOKBACK} before named {package}: a new "
                        f"dependency, or an upgrade that brought the bug. Upgrade it if a fixed "
                        f"release exists (the {semconv.ADVICE} attribute of the "
                        f"{semconv.VIOLATION_SPAN} spans says so when scopetrace knows the bug); "
                        f"'{DASHBOARD_UID}' dashboard, row 'Which library do we upgrade?'."
                    ),
                },
            },
            {
                "alert": "AnyioCancelScopeViolationRateHigh",
                "expr": f"sum by ({JOB}) (rate({v}[{RATE_WINDOW}])) > {RATE_THRESHOLD}\n",
                "for": RATE_FOR,
                "labels": {"severity": "critical"},
                "annotations": {
                    "summary": f"anyio cancel-scope violations above {RATE_THRESHOLD}/s in {service}",
                    "description": (
                        f"{service} has had {{{{ $value | humanize }}}} violations per second "
                        f"for {RATE_FOR}. Each one raised RuntimeError in a request or task."
                    ),
                },
            },
            {
                "alert": "AnyioCancelScopeViolationsWithHttp5xx",
                "expr": (
                    f"(sum by ({JOB}) (rate({v}[{RATE_WINDOW}])) > 0)\n"
                    f"and on ({JOB})\n"
                    f"(sum by ({JOB}) (rate({h5}[{RATE_WINDOW}])) > 0)\n"
                ),
                "for": RATE_FOR,
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": f"{service} serves HTTP 5xx while cancel scopes are violated",
                    "description": (
                        "Its 500s are likely this bug: compare the two on the "
                        f"'{DASHBOARD_UID}' dashboard (row 'Are our 500s this bug?')."
                    ),
                },
            },
        ],
    }]}


# --- writing ---------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)

RULES_HEADER = (
    "# Prometheus alerting rules for scopetrace's anyio cancel-scope violations.\n"
    "# Generated by dashboards/generate.py from scopetrace.semconv: do not edit by hand.\n"
    "# Check: promtool check rules dashboards/prometheus/scopetrace-alerts.rules.yml\n"
)


def render() -> dict[Path, str]:
    return {
        DASHBOARD_PATH: json.dumps(dashboard(), indent=2) + "\n",
        RULES_PATH: RULES_HEADER
        + yaml.dump(rules(), Dumper=_Dumper, sort_keys=False, width=100),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(HERE.parent)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
