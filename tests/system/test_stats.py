"""GET /v1/stats and `kiln stats`: percentiles, success rate, lease expiries,
utilisation, the queue now — and each recommendation rule of docs/stats.md,
fired by a scenario built for it with fake agents (and not fired by a
healthy one)."""
import json
import os
import time

import kilntest
from kilnapi import FakeAgent, Server, spec, wait_for


class StatsCase(kilntest.TempDirTestCase):
    server_args = ()

    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"), self.server_args).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def agent(self, name, labels=("linux",), slots=4, **cap):
        a = FakeAgent(self.server.addr, name, labels=labels, capacity=dict(slots=slots, **cap))
        a.register()
        self.addCleanup(a.close)
        return a

    def submit(self, n=1, **kw):
        ids = []
        for _ in range(n):
            status, body = self.api.call("POST", "/v1/jobs", spec(**kw))
            self.assertEqual(status, 201, body)
            ids.append(body["jobs"][0]["id"])
        return ids

    def run_jobs(self, agent, n, state="succeeded", wall_ms=1000, oom=0, **kw):
        """Submits n jobs the agent leases and completes with `state`."""
        for jid in self.submit(n, **kw):
            lease = agent.lease()
            self.assertIsNotNone(lease, f"{agent.name} got no lease")
            fence = lease["fence"]
            agent.status(lease["job"]["id"], fence)
            status, body = agent.c.call(
                "POST", f"/v1/jobs/{lease['job']['id']}/complete",
                {"fence": fence, "state": state, "exit_code": 0 if state == "succeeded" else 1,
                 "usage": {"wall_ms": wall_ms, "cpu_user_ms": 10, "oom_kills": oom}})
            self.assertEqual(status, 200, body)

    def stats(self, **q):
        query = "&".join(f"{k}={v}" for k, v in q.items())
        return self.api.ok("GET", "/v1/stats" + ("?" + query if query else ""))

    def rules(self, report):
        return {r["rule"]: r for r in report["recommendations"]}


class FiguresTest(StatsCase):
    def test_percentiles_per_label_set_and_executor(self):
        a = self.agent("a1", labels=("linux", "gpu"), gpus=1)
        # 20 linux jobs of 1..20 s; 2 gpu jobs of 100 s.
        for i in range(1, 21):
            self.run_jobs(a, 1, wall_ms=i * 1000, name=f"l{i}")
        self.run_jobs(a, 2, wall_ms=100000, runs_on=("gpu",), resources={"gpus": 1})
        self.run_jobs(a, 1, state="failed", wall_ms=5000)
        r = self.stats()
        self.assertEqual(r["jobs"]["finished"], 23)
        self.assertEqual(r["jobs"]["succeeded"], 22)
        self.assertAlmostEqual(r["jobs"]["success_rate"], 22 / 23)
        groups = {(g["labels"], g["executor"]): g for g in r["groups"]}
        lin = groups[("linux", "sandbox")]
        self.assertEqual(lin["outcome"]["attempts"], 21)
        # Nearest rank over 1..20 and one 5: p50 = 10, p95 = 19, p99 = 20.
        self.assertEqual(lin["duration_seconds"]["p50"], 10)
        self.assertEqual(lin["duration_seconds"]["p95"], 19)
        self.assertEqual(lin["duration_seconds"]["p99"], 20)
        gpu = groups[("gpu", "gpu")]
        self.assertEqual(gpu["duration_seconds"]["p50"], 100)
        self.assertEqual(gpu["outcome"]["success_rate"], 1)
        self.assertEqual(r["queue_wait_seconds"]["count"], 23)
        self.assertIsNotNone(r["queue_wait_seconds"]["p95"])
        ag = r["agents"][0]
        self.assertEqual((ag["name"], ag["state"], ag["outcome"]["attempts"]), ("a1", "ready", 23))
        self.assertGreater(ag["busy_seconds"], 0)
        self.assertEqual(self.rules(r), {})
        # A window before all this is empty.
        old = self.stats(since="3h", until="2h")
        self.assertEqual(old["attempts"]["attempts"], 0)
        self.assertIsNone(old["duration_seconds"]["p50"])

        out = kilntest.run(["stats", "--server", self.server.addr, "--token", self.server.token])
        self.assertEqual(out.returncode, 0, out.stderr)
        for s in ("kiln performance report", "Jobs", "23 finished", "Duration", "p50 11.0s",
                  "10.0s  19.0s  20.0s",
                  "By label set and executor:", "gpu", "Agents:", "a1", "Now:",
                  "Recommendations:", "none: no rule fired."):
            self.assertIn(s, out.stdout)
        out = kilntest.run(["stats", "--server", self.server.addr, "--token", self.server.token, "-o", "json"])
        self.assertEqual(json.loads(out.stdout)["jobs"]["finished"], 23)

    def test_bad_parameters(self):
        for q, word in (("since=soon", "since"), ("wait_threshold=fast", "wait_threshold"),
                        ("min_attempts=0", "min_attempts")):
            status, body = self.api.call("GET", "/v1/stats?" + q)
            self.assertEqual(status, 400, body)
            self.assertIn(word, body["error"]["message"])
        out = kilntest.run(["stats", "--server", self.server.addr, "--token", self.server.token, "--since", "soon"])
        self.assertEqual(out.returncode, 1)
        out = kilntest.run(["stats", "-o", "yaml"])
        self.assertEqual(out.returncode, 2)


class RulesTest(StatsCase):
    def test_label_mismatch(self):
        # gpu jobs wait for the one busy gpu agent while a linux agent idles.
        busy = self.agent("gpu1", labels=("linux", "gpu"), slots=1)
        self.agent("cpu1", labels=("linux",), slots=4)
        self.submit(1, runs_on=("gpu",))
        self.assertIsNotNone(busy.lease())
        self.submit(2, runs_on=("gpu",))
        rec = self.rules(self.stats(wait_threshold="0s"))["label-mismatch"]
        self.assertEqual(rec["evidence"]["labels"], "gpu")
        self.assertEqual(rec["evidence"]["queued"], 2)
        self.assertEqual(rec["evidence"]["idle_slots"], 4)
        self.assertIn("idle", rec["why"])
        # Under the threshold, nothing fires.
        self.assertNotIn("label-mismatch", self.rules(self.stats(wait_threshold="1h")))
        out = kilntest.run(["stats", "--server", self.server.addr, "--token", self.server.token, "--wait-threshold", "0s"])
        self.assertIn("[warning] label-mismatch:", out.stdout)
        self.assertIn("rule: jobs queued longer than the wait threshold", out.stdout)

    def test_unschedulable(self):
        self.agent("a1")
        self.submit(3, runs_on=("arm64",))
        rec = self.rules(self.stats())["unschedulable"]
        self.assertEqual(rec["severity"], "critical")
        self.assertEqual(rec["evidence"]["queued"], 3)
        self.assertIn("arm64", rec["message"])

    def test_drain_the_failing_agent(self):
        good, bad = self.agent("good"), self.agent("bad")
        self.run_jobs(good, 6)
        self.run_jobs(bad, 6, state="failed")
        r = self.stats()
        rec = self.rules(r)["drain-agent"]
        self.assertEqual(rec["evidence"]["agent"], "bad")
        self.assertEqual(rec["evidence"]["failure_rate"], 1)
        self.assertEqual(rec["evidence"]["others_failure_rate"], 0)
        self.assertIn("drain", rec["message"])

    def test_everything_failing_blames_the_jobs_not_an_agent(self):
        a, b = self.agent("a"), self.agent("b")
        self.run_jobs(a, 5, state="failed")
        self.run_jobs(b, 5, state="failed")
        rules = self.rules(self.stats(min_attempts=2))
        self.assertNotIn("drain-agent", rules)
        self.assertEqual(rules["failure-rate"]["evidence"], {"jobs": 10, "succeeded": 0})

    def test_timeouts_and_oom(self):
        a = self.agent("a1")
        self.run_jobs(a, 3, name="ok")
        self.run_jobs(a, 2, state="timed_out", name="slow")
        self.run_jobs(a, 3, state="failed", oom=2, name="big")
        rules = self.rules(self.stats())
        self.assertEqual(rules["timeouts"]["evidence"]["timed_out"], 2)
        self.assertEqual(rules["oom"]["evidence"]["attempts_with_oom_kills"], 3)

    def test_add_capacity(self):
        # One slot, leased all the time since the agent registered.
        self.submit(4)
        a = self.agent("only", slots=1)
        for _ in range(3):
            lease = a.lease()
            time.sleep(0.3)
            a.complete(lease["job"]["id"], lease["fence"])
        a.lease()  # the fourth is still running when the report is made
        time.sleep(0.3)
        r = self.stats(wait_threshold="0s")
        self.assertGreater(r["utilisation"], 0.85)
        self.assertIn("add-capacity", self.rules(r))

    def test_over_provisioned(self):
        a = self.agent("a1")
        self.agent("a2")
        self.run_jobs(a, 1)
        time.sleep(0.5)
        r = self.stats(since="2h")
        self.assertLess(r["utilisation"], 0.1)
        self.assertEqual(self.rules(r)["over-provisioned"]["severity"], "info")


class LeaseExpiryRuleTest(StatsCase):
    server_args = ("--lease-ttl", "500ms")

    def test_lease_expiries(self):
        flaky = self.agent("flaky")
        self.submit(3, retries=1)
        leases = [flaky.lease() for _ in range(3)]
        self.assertTrue(all(leases))
        # Nobody renews: the three leases expire and the jobs go back.
        wait_for(lambda: self.stats()["attempts"]["lease_expiries"] == 3, timeout=20,
                 interval=0.2, what="three lease expiries")
        r = self.stats()
        self.assertEqual(r["agents"][0]["outcome"]["lease_expiries"], 3)
        rec = self.rules(r)["lease-expiries"]
        self.assertEqual(rec["evidence"]["worst_agent"], "flaky")
        self.assertIn("--lease-ttl", rec["message"])


if __name__ == "__main__":
    kilntest.main()
