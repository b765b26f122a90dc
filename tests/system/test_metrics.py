"""GET /metrics on kiln server: the Prometheus text format, clean under
`promtool check metrics`, with the families of docs/metrics.md moving as
jobs are submitted, leased, finished, cancelled, lost and timed out."""
import json
import os
import re
import unittest

import kilnagent
import kilnmetrics
import kilntest
import kilnup
from kilnapi import Client, FakeAgent, Server, spec, wait_for


class MetricsCase(kilntest.TempDirTestCase):
    server_args = ("--lease-ttl", "1s", "--timeout-grace", "1s")

    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"), self.server_args).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            rc = self.server.stop()
            self.assertEqual(rc, 0, self.server.read_log()[-3000:])

    def agent(self, name="a1", **kw):
        a = FakeAgent(self.server.addr, name, **kw)
        a.register()
        self.addCleanup(a.close)
        return a

    def submit(self, **kw):
        status, body = self.api.call("POST", "/v1/jobs", spec(**kw))
        self.assertEqual(status, 201, body)
        return body["jobs"][0]["id"]

    def scrape(self):
        status, ctype, text = kilnmetrics.fetch(self.server.addr)
        self.assertEqual(status, 200, text)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        if os.path.exists(kilnmetrics.PROMTOOL):
            ok, out = kilnmetrics.promtool_check(text)
            self.assertTrue(ok, "promtool check metrics:\n" + out + "\n" + text[:3000])
        return kilnmetrics.parse(text)


class ServerMetricsTest(MetricsCase):
    def test_empty_server_is_clean(self):
        if not os.path.exists(kilnmetrics.PROMTOOL):
            print("skip promtool part: promtool not installed (Debian package prometheus)")
        m = self.scrape()
        self.assertEqual(kilnmetrics.total(m, "kiln_build_info"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_queue_depth", org="default"), 0)
        self.assertEqual(m["types"]["kiln_http_requests_total"], "counter")
        self.assertEqual(m["types"]["kiln_dispatch_latency_seconds"], "histogram")
        self.assertEqual(m["types"]["kiln_queue_depth"], "gauge")
        self.assertIsNotNone(kilnmetrics.value(m, "process_resident_memory_bytes"))
        # No family carries a per-job label (series must stay bounded).
        for _, labels, _ in m["samples"]:
            self.assertNotIn("job_id", labels)
            self.assertNotIn("job", labels)

    def test_job_lifecycle_moves_the_families(self):
        a = self.agent(capacity={"slots": 2, "gpus": 1})
        j1 = self.submit(name="ok")
        j2 = self.submit(name="bad")
        j3 = self.submit(name="never", runs_on=("nowhere",))
        m = self.scrape()
        self.assertEqual(kilnmetrics.value(m, "kiln_queue_depth", org="default"), 3)
        self.assertEqual(kilnmetrics.value(m, "kiln_queue_unschedulable", org="default"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_jobs_submitted_total", org="default"), 3)
        self.assertEqual(kilnmetrics.value(m, "kiln_agents", state="ready"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_slots", state="idle"), 2)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_gpus", state="idle"), 1)

        l1 = a.lease()
        l2 = a.lease()
        self.assertEqual({l1["job"]["id"], l2["job"]["id"]}, {j1, j2})
        a.status(l1["job"]["id"], l1["fence"])
        m = self.scrape()
        self.assertEqual(kilnmetrics.value(m, "kiln_queue_depth", org="default"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_jobs_active", state="running", org="default"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_jobs_active", state="leased", org="default"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_slots", state="busy"), 2)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_slots", state="idle"), 0)
        self.assertEqual(kilnmetrics.value(m, "kiln_leases_granted_total"), 2)
        self.assertEqual(kilnmetrics.value(m, "kiln_dispatch_latency_seconds_count"), 2)
        self.assertEqual(kilnmetrics.value(m, "kiln_dispatch_latency_seconds_bucket", le="+Inf"), 2)

        by_id = {l1["job"]["id"]: l1, l2["job"]["id"]: l2}
        self.assertEqual(a.complete(j1, by_id[j1]["fence"], "succeeded", 0)[0], 200)
        self.assertEqual(a.complete(j2, by_id[j2]["fence"], "failed", 3)[0], 200)
        # A retransmitted completion is not counted twice.
        self.assertEqual(a.complete(j1, by_id[j1]["fence"], "succeeded", 0)[0], 200)
        self.assertEqual(self.api.call("POST", f"/v1/jobs/{j3}/cancel")[0], 200)
        m = self.scrape()
        self.assertEqual(kilnmetrics.value(m, "kiln_jobs_total", state="succeeded", org="default"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_jobs_total", state="failed", org="default"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_jobs_total", state="cancelled", org="default"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_queue_depth", org="default"), 0)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_slots", state="idle"), 2)
        # Route names, not raw paths; codes as numbers.
        self.assertEqual(kilnmetrics.value(m, "kiln_http_requests_total",
                                           route="jobs.complete", code="200"), 3)
        self.assertEqual(kilnmetrics.value(m, "kiln_http_requests_total",
                                           route="jobs.submit", code="201"), 3)
        self.assertEqual(kilnmetrics.value(m, "kiln_http_request_duration_seconds_count",
                                           route="jobs.submit"), 3)
        routes = {l.get("route") for n, l, _ in m["samples"] if n == "kiln_http_requests_total"}
        self.assertFalse(any("/" in r for r in routes), routes)

    def test_unmatched_and_errors_are_counted(self):
        self.assertEqual(self.api.call("GET", "/no/such/thing")[0], 404)
        self.assertEqual(self.api.call("GET", "/v1/jobs/999")[0], 404)
        self.assertEqual(self.api.call("DELETE", "/v1/jobs")[0], 405)
        m = self.scrape()
        self.assertEqual(kilnmetrics.value(m, "kiln_http_requests_total",
                                           route="unmatched", code="404"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_http_requests_total",
                                           route="jobs.get", code="404"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_http_requests_total",
                                           route="unmatched", code="405"), 1)

    def test_lease_expiry_requeue_and_loss(self):
        a = self.agent()
        jid = self.submit(name="flaky", retries=1)
        l1 = a.lease()
        self.assertEqual(l1["job"]["id"], jid)
        # Nobody renews: expires, goes back to the queue (attempt 2 of 2).
        wait_for(lambda: kilnmetrics.value(self.scrape(), "kiln_lease_expired_total") == 1,
                 timeout=15, interval=0.2, what="a lease expiry")
        m = self.scrape()
        self.assertEqual(kilnmetrics.value(m, "kiln_jobs_requeued_total", org="default"), 1)
        l2 = a.lease(wait_ms=5000)
        self.assertEqual(l2["job"]["id"], jid)
        wait_for(lambda: kilnmetrics.value(self.scrape(), "kiln_jobs_total",
                                           state="lost", org="default") == 1,
                 timeout=15, interval=0.2, what="the job lost")
        m = self.scrape()
        self.assertEqual(kilnmetrics.value(m, "kiln_lease_expired_total"), 2)
        self.assertEqual(kilnmetrics.value(m, "kiln_dispatch_latency_seconds_count"), 2)

    def test_server_timeout_is_counted(self):
        a = self.agent()
        jid = self.submit(name="slow", **{"timeout": "1s"})
        lease = a.lease()
        a.status(jid, lease["fence"])

        def beat_and_check():
            a.heartbeat([(jid, lease["fence"])])
            return kilnmetrics.value(self.scrape(), "kiln_jobs_total",
                                     state="timed_out", org="default") == 1
        wait_for(beat_and_check, timeout=20, interval=0.2, what="a server-side timeout")


class AgentMetricsTest(kilnagent.JobCase):
    """kiln agent --metrics-listen: the agent's own /metrics."""

    def agent_metrics(self, agent):
        m = re.search(r'msg="agent metrics listening" addr=(\S+)', agent.read_log())
        self.assertIsNotNone(m, agent.read_log()[-2000:])
        status, ctype, text = kilnmetrics.fetch(m.group(1), headers={"Authorization": "none"})
        self.assertEqual(status, 200, text)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        if os.path.exists(kilnmetrics.PROMTOOL):
            ok, out = kilnmetrics.promtool_check(text)
            self.assertTrue(ok, "promtool check metrics:\n" + out + "\n" + text[:3000])
        return kilnmetrics.parse(text), m.group(1)

    def test_agent_serves_its_metrics(self):
        a = self.start_agent("m1", args=["--metrics-listen", "127.0.0.1:0", "--slots", "2"])
        jid = self.submit(kilnagent.job("hello", ["echo hi"]))
        self.assertEqual(self.wait_job(jid)["state"], "succeeded")
        jf = self.submit(kilnagent.job("bad", ["exit 3"]))
        self.assertEqual(self.wait_job(jf)["state"], "failed")
        # The runner is reaped just after its completion is answered.
        wait_for(lambda: kilnmetrics.value(self.agent_metrics(a)[0],
                                           "kiln_agent_running_jobs") == 0,
                 timeout=30, interval=0.2, what="no running job")
        m, addr = self.agent_metrics(a)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_info", agent="m1"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_capacity_slots"), 2)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_jobs_finished_total", state="succeeded"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_jobs_finished_total", state="failed"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_job_start_seconds_count"), 2)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_job_duration_seconds_count"), 2)
        self.assertGreaterEqual(kilnmetrics.value(m, "kiln_agent_lease_polls_total", result="job"), 2)
        self.assertIsNotNone(kilnmetrics.value(m, "process_resident_memory_bytes"))
        wait_for(lambda: (kilnmetrics.value(self.agent_metrics(a)[0], "kiln_agent_heartbeats_total",
                                            result="ok") or 0) >= 1,
                 timeout=30, interval=0.5, what="a heartbeat counted")
        self.assertEqual(kilnmetrics.value(self.agent_metrics(a)[0], "kiln_agent_server_up"), 1)
        # Only GET /metrics is served.
        self.assertEqual(kilnmetrics.fetch(addr, "/nope")[0], 404)

    def test_bad_listen_address(self):
        r = kilntest.run(["agent", "--server", self.server.addr, "--state-dir",
                          os.path.join(self.tmp, "bad"), "--metrics-listen", "nowhere"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("--metrics-listen 'nowhere'", r.stderr)


class UpMetricsTest(kilntest.TempDirTestCase):
    """kiln up: one /metrics, on the server's address, with the agent's families too."""

    def test_server_and_agent_families_in_one_endpoint(self):
        reason = kilnup.skip_reason()
        if reason:
            self.skipTest(reason)
        up = kilnup.Up(self.tmp, args=("--slots", "1")).start()
        self.addCleanup(up.stop)
        api = Client(up.addr)
        self.addCleanup(api.close)
        jid = api.ok("POST", "/v1/jobs", json.dumps(kilnagent.job("hi", ["echo hi"])))["jobs"][0]["id"]
        wait_for(lambda: api.ok("GET", f"/v1/jobs/{jid}")["state"] == "succeeded", timeout=60,
                 what="the job")
        status, _, text = kilnmetrics.fetch(up.addr)
        self.assertEqual(status, 200, text)
        if os.path.exists(kilnmetrics.PROMTOOL):
            ok, out = kilnmetrics.promtool_check(text)
            self.assertTrue(ok, out)
        m = kilnmetrics.parse(text)
        self.assertEqual(kilnmetrics.total(m, "kiln_jobs_total", state="succeeded"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_agent_jobs_finished_total", state="succeeded"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_job_duration_seconds_count", executor="sandbox"), 1)
        # One set of process_* families, not two.
        self.assertEqual(text.count("# TYPE process_resident_memory_bytes "), 1)
        self.assertEqual(up.stop(), 0)


if __name__ == "__main__":
    kilntest.main()
