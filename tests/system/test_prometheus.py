"""A real Prometheus (Debian's package) scraping a running `kiln up` every
second, answering histogram_quantile queries over kiln's histograms —
dispatch latency, job duration, HTTP request duration — and the counters
(jobs by state, agents' jobs) after a handful of real jobs.

Prometheus runs as a subprocess with its own config and a temporary
storage directory. It cannot bind port 0, so the test finds a free port
(binds 0, closes, reuses it) and tries again with another if Prometheus
loses the race."""
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import kilnagent
import kilntest
import kilnup
from kilnapi import Client, wait_for

PROMETHEUS = shutil.which("prometheus")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, tmp, target, token):
        self.tmp = tmp
        self.dir = os.path.join(tmp, "prometheus")
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            # JSON is YAML: no PyYAML needed.
            json.dump({
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                           "evaluation_interval": "1s"},
                "scrape_configs": [{
                    "job_name": "kiln",
                    "static_configs": [{"targets": [target]}],
                    "authorization": {"type": "Bearer", "credentials": token},
                }],
            }, f)
        self.proc = None
        self.addr = None
        self.log_path = os.path.join(self.dir, "prometheus.log")

    def start(self):
        for _ in range(3):
            port = free_port()
            self.addr = f"127.0.0.1:{port}"
            self.log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [PROMETHEUS, "--config.file", self.config, "--storage.tsdb.path",
                 os.path.join(self.dir, "data"), "--web.listen-address", self.addr,
                 "--log.level", "warn"],
                stdout=self.log, stderr=self.log)
            try:
                wait_for(lambda: self.ready() or self.proc.poll() is not None, timeout=60,
                         interval=0.2, what="prometheus ready")
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            # Lost the port to someone else between our probe and its bind: again.
            self.log.close()
            self.proc = None
        raise AssertionError("prometheus did not start: " + self.read_log()[-2000:])

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://{self.addr}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, q):
        """The result vector of an instant query: [(labels, float value)]."""
        url = f"http://{self.addr}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise AssertionError(f"query {q!r}: {body}")
        return [(e["metric"], float(e["value"][1])) for e in body["data"]["result"]]

    def scalar(self, q):
        """The one value of q (None when the result is empty or NaN)."""
        res = self.query(q)
        if len(res) != 1 or math.isnan(res[0][1]):
            return None
        return res[0][1]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        self.proc = None


class PrometheusTest(kilntest.TempDirTestCase):
    def setUp(self):
        reason = kilnup.skip_reason()
        if reason:
            self.skipTest(reason)
        if not PROMETHEUS:
            self.skipTest("prometheus is not installed (Debian package prometheus)")
        super().setUp()
        self.up = kilnup.Up(self.tmp, args=("--slots", "2")).start()
        self.addCleanup(self.up.stop)
        self.api = Client(self.up.addr)
        self.addCleanup(self.api.close)
        self.prom = Prometheus(self.tmp, self.up.addr, self.up.token).start()
        self.addCleanup(self.prom.stop)

    def test_histogram_quantiles_over_a_live_kiln_up(self):
        wait_for(lambda: self.prom.scalar('up{job="kiln"}') == 1, timeout=60, interval=0.5,
                 what="prometheus scraping kiln up")
        n = 8
        ids = []
        for i in range(n):
            doc = kilnagent.job(f"job-{i}", [f"sleep 0.{i % 4 + 1}"] if i % 3 else ["exit 1"])
            status, body = self.api.call("POST", "/v1/jobs", json.dumps(doc))
            self.assertEqual(status, 201, body)
            ids.append(body["jobs"][0]["id"])
        wait_for(lambda: all(self.api.ok("GET", f"/v1/jobs/{j}")["state"] in ("succeeded", "failed")
                             for j in ids), timeout=120, what="the jobs")
        failed = sum(1 for i in range(n) if i % 3 == 0)
        # A scrape after the last job: the counters are all in.
        wait_for(lambda: self.prom.scalar('sum(kiln_jobs_total{job="kiln"})') == n, timeout=30,
                 interval=0.5, what="prometheus to see every job")
        self.assertEqual(self.prom.scalar('kiln_jobs_total{state="failed"}'), failed)
        self.assertEqual(self.prom.scalar('sum(kiln_agent_jobs_finished_total)'), n)

        # Quantiles of kiln's histograms, as an operator's dashboard asks them.
        dispatch = self.prom.scalar(
            'histogram_quantile(0.95, sum by (le) (increase(kiln_dispatch_latency_seconds_bucket[5m])))')
        self.assertIsNotNone(dispatch)
        self.assertGreater(dispatch, 0)
        self.assertLess(dispatch, 60)
        p50 = self.prom.scalar(
            'histogram_quantile(0.5, sum by (le) (increase(kiln_job_duration_seconds_bucket[5m])))')
        self.assertIsNotNone(p50)
        self.assertGreater(p50, 0)
        self.assertLessEqual(p50, 5)  # every job ran well under the 5 s bucket bound
        by_exec = self.prom.query(
            'histogram_quantile(0.99, sum by (le, executor) (increase(kiln_job_duration_seconds_bucket[5m])))')
        # Only the sandbox executor ran anything (gpu's series is there, at 0: NaN).
        self.assertEqual([m["executor"] for m, v in by_exec if not math.isnan(v)], ["sandbox"])
        # Per-route series appear with a route's first request: over the
        # whole life of the counters rather than a rate.
        routes = self.prom.query(
            'histogram_quantile(0.9, sum by (le, route) (kiln_http_request_duration_seconds_bucket))')
        submit = [v for m, v in routes if m.get("route") == "jobs.submit"]
        self.assertEqual(len(submit), 1, routes)
        self.assertGreater(submit[0], 0)
        self.assertEqual(self.prom.scalar(
            'kiln_http_requests_total{route="jobs.submit",code="201"}'), n)
        # Gauges: the fleet at rest again.
        wait_for(lambda: self.prom.scalar('kiln_agent_slots{state="busy"}') == 0, timeout=30,
                 interval=0.5, what="the slots free again")
        self.assertEqual(self.prom.scalar('kiln_agent_slots{state="idle"}'), 2)
        self.assertEqual(self.prom.scalar('sum(kiln_queue_depth)'), 0)


if __name__ == "__main__":
    kilntest.main()
