"""Per-org limits: token-bucket rate limits on API calls, submissions and
webhook deliveries (429 + Retry-After, other orgs unaffected), the per-org
cap on running jobs, and agents shared round-robin between orgs with queued
work."""
import hashlib
import hmac
import json
import os
import time
import uuid

import kilntest
from kilnapi import Client, FakeAgent, Server, spec, wait_for
from kilntest import run


class LimitCase(kilntest.TempDirTestCase):
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

    def client(self, role, org):
        c = Client(self.server.addr, token=self.server.mint(role, org)[0])
        self.addCleanup(c.close)
        return c


class RateTest(LimitCase):
    # Buckets of 5 API calls, 2 jobs and 1 delivery, refilled slowly enough
    # (one per 2, 5 and 10 s) that a loaded test machine cannot refill them.
    server_args = ("--org-api-rate", "0.5", "--org-submit-rate", "0.2", "--org-webhook-rate", "0.1",
                   "--org-burst", "10")

    def test_api_rate_is_per_org(self):
        self.server.org("a")
        self.server.org("b")
        a, b = self.client("viewer", "a"), self.client("viewer", "b")
        statuses = [a.raw("GET", "/v1/jobs")[0] for _ in range(8)]
        self.assertEqual(statuses[:5], [200] * 5)
        self.assertEqual(statuses[5:], [429] * 3)
        status, headers, body = a.raw("GET", "/v1/jobs")
        self.assertEqual(status, 429)
        retry = int(headers["retry-after"])
        self.assertGreaterEqual(retry, 1)
        err = json.loads(body)["error"]
        self.assertEqual(err["code"], "rate_limited")
        self.assertIn("org 'a'", err["message"])
        # Org b and the admin are not affected.
        self.assertEqual(b.raw("GET", "/v1/jobs")[0], 200)
        self.assertEqual(self.api.raw("GET", "/v1/jobs")[0], 200)
        time.sleep(retry)
        self.assertEqual(a.raw("GET", "/v1/jobs")[0], 200)
        metrics = self.api.raw("GET", "/metrics")[2].decode()
        self.assertRegex(metrics, r'kiln_rate_limited_total\{org="a",limit="api"\} [1-9]')

    def test_submissions_cost_one_per_job(self):
        self.server.org("a")
        m = self.client("member", "a")
        matrix = json.dumps({"name": "m", "steps": [{"run": "true"}], "matrix": {"x": [1]}})
        self.assertEqual(m.call("POST", "/v1/jobs", matrix)[0], 201)
        # Bucket of 2 jobs: one left, then a two-job matrix is refused, nothing made.
        two = json.dumps({"name": "m", "steps": [{"run": "true"}], "matrix": {"x": [1, 2]}})
        m2 = self.client("member", "a")
        status, body = m2.call("POST", "/v1/jobs", two)
        self.assertEqual(status, 429, body)
        self.assertIn("submission rate", body["error"]["message"])
        self.assertEqual(len(self.api.ok("GET", "/v1/jobs?org=a")["jobs"]), 1)
        # The one job left in the bucket fits; then nothing does.
        self.assertEqual(m2.call("POST", "/v1/jobs", spec())[0], 201)
        self.assertEqual(m2.call("POST", "/v1/jobs", spec())[0], 429)
        self.assertEqual(len(self.api.ok("GET", "/v1/jobs?org=a")["jobs"]), 2)

    def test_webhook_deliveries_are_limited_once_signed(self):
        secret = "s-" + uuid.uuid4().hex
        r = run(["webhook", "secret"], input=secret, env={"KILN_ADDR": self.server.addr,
                                                          "KILN_TOKEN": self.server.token})
        self.assertEqual(r.returncode, 0, r.stderr)
        anon = Client(self.server.addr, token="")
        self.addCleanup(anon.close)

        def deliver(sec):
            body = b"{}"
            sig = "sha256=" + hmac.new(sec.encode(), body, hashlib.sha256).hexdigest()
            return anon.raw("POST", "/v1/webhooks/github", body,
                            {"X-GitHub-Event": "ping", "X-GitHub-Delivery": str(uuid.uuid4()),
                             "X-Hub-Signature-256": sig})[0]
        # Bad signatures do not use up the budget.
        self.assertEqual([deliver("wrong") for _ in range(5)], [401] * 5)
        self.assertEqual(deliver(secret), 200)
        self.assertEqual(deliver(secret), 429)


class CapTest(LimitCase):
    def test_running_cap_per_org(self):
        self.server.org("a")
        self.server.org("b")
        r = run(["org", "limits", "a", "--max-running", "1"],
                env={"KILN_ADDR": self.server.addr, "KILN_TOKEN": self.server.token})
        self.assertEqual(r.returncode, 0, r.stderr)
        a, b = self.client("member", "a"), self.client("member", "b")
        ja = [a.ok("POST", "/v1/jobs", spec(name=f"a{i}"))["jobs"][0]["id"] for i in range(3)]
        jb = b.ok("POST", "/v1/jobs", spec(name="b0"))["jobs"][0]["id"]
        ag = FakeAgent(self.server.addr, "big", capacity={"slots": 8})
        ag.register()
        self.addCleanup(ag.close)
        l1 = ag.lease()
        l2 = ag.lease()
        got = {l1["job"]["id"], l2["job"]["id"]}
        self.assertIn(jb, got)
        self.assertEqual(len(got & set(ja)), 1)
        # A is at its cap: nothing more for now, even with free slots.
        self.assertIsNone(ag.lease(wait_ms=300))
        orgs = {o["name"]: o for o in self.api.ok("GET", "/v1/orgs")["orgs"]}
        self.assertEqual((orgs["a"]["running"], orgs["a"]["max_running"]), (1, 1))
        # A parked poll gets A's next job the moment the first one ends.
        la = l1 if l1["job"]["id"] in ja else l2
        import threading
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("l", ag.lease(wait_ms=5000, timeout=30)))
        t.start()
        time.sleep(0.3)
        poller = FakeAgent(self.server.addr, "big")
        poller.id = ag.id
        poller.job_tokens = ag.job_tokens
        self.addCleanup(poller.close)
        self.assertEqual(poller.complete(la["job"]["id"], la["fence"])[0], 200)
        t.join(30)
        self.assertIn(result["l"]["job"]["id"], ja)
        # Raising the cap frees the rest at once.
        r = run(["org", "limits", "a", "--max-running", "default"],
                env={"KILN_ADDR": self.server.addr, "KILN_TOKEN": self.server.token})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsNotNone(ag.lease(wait_ms=2000))


class FairTest(LimitCase):
    def test_agents_are_shared_round_robin_between_orgs(self):
        for o in ("a", "b", "c"):
            self.server.org(o)
        a, b, c = (self.client("member", o) for o in ("a", "b", "c"))
        # A floods first, then B and C queue a little; all the same priority.
        for i in range(8):
            a.ok("POST", "/v1/jobs", spec(name=f"a{i}"))
        for i in range(2):
            b.ok("POST", "/v1/jobs", spec(name=f"b{i}"))
        c.ok("POST", "/v1/jobs", spec(name="c0"))
        ag = FakeAgent(self.server.addr, "one-slot", capacity={"slots": 1})
        ag.register()
        self.addCleanup(ag.close)
        order = []
        for _ in range(11):
            lease = ag.lease(wait_ms=2000)
            order.append(lease["job"]["name"][0])
            self.assertEqual(ag.complete(lease["job"]["id"], lease["fence"])[0], 200)
        # Round-robin: the first three leases serve all three orgs, and B and
        # C are done long before A's backlog.
        self.assertEqual(sorted(order[:3]), ["a", "b", "c"], order)
        self.assertLessEqual(max(i for i, o in enumerate(order) if o in "bc"), 4, order)
        self.assertEqual(order.count("a"), 8)
        # Within an org, submission order holds.
        names = [n for n in order if n == "a"]
        self.assertEqual(len(names), 8)


if __name__ == "__main__":
    kilntest.main()
