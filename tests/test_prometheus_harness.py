"""The test Prometheus (tests/prometheus_testing.py) scrapes what it is given, answers queries,
refuses an expression that does not parse with Prometheus's own message, and promtool's check of
exposition text tells a malformed one from a good one."""

from __future__ import annotations

import http.server
import threading

import pytest

from conftest import require
from prometheus_testing import (
    PrometheusError,
    prometheus_binary,
    promtool_binary,
    promtool_check_metrics,
    running_prometheus,
)

EXPOSITION = "# HELP demo_requests_total Requests.\n# TYPE demo_requests_total counter\ndemo_requests_total 7\n"


@pytest.fixture
def exporter():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = EXPOSITION.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_real_prometheus_scrapes_and_answers(exporter):
    require(prometheus_binary() is not None, "prometheus (Debian's package): run `make prometheus`")
    with running_prometheus({"demo": [exporter]}) as prometheus:
        (series,) = prometheus.wait_for("demo_requests_total", 30)
        assert series["metric"]["job"] == "demo" and float(series["value"][1]) == 7
        assert prometheus.targets()[0]["health"] == "up"
        assert prometheus.query("demo_requests_total > 100") == []
        with pytest.raises(PrometheusError, match="parse error"):
            prometheus.query("sum by (le (demo_requests_total)")


def test_promtool_checks_exposition_text():
    require(promtool_binary() is not None, "promtool (Debian's prometheus package): run `make prometheus`")
    ok, output = promtool_check_metrics(EXPOSITION)
    assert ok, output
    ok, output = promtool_check_metrics(EXPOSITION + "demo_requests_total{unclosed 1\n")
    assert not ok and "error" in output.lower(), output
