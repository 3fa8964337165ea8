"""Sinks: where reports go, each on its own (see :mod:`scopetrace._reporter`).

``_otel``  the span and the counter (the application's providers, or the embedded SDK)
``_otlp``  the embedded OTLP exporter (``SCOPETRACE_EXPORTER=otlp``)
``_text``  the log record, and the console report (``SCOPETRACE_EXPORTER=console``)
``_jsonl`` the jsonl file (``SCOPETRACE_EXPORTER=jsonl``; ``scopetrace report`` reads it)
``_sentry`` tags and context on Sentry's event, one event per failure
"""
