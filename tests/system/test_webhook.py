"""GitHub workflow_job intake: the published signature test vector and its
negatives (checked before any parsing), two secrets during a rotation, the
replay fence (delivery id, and the (job, attempt, action) key), real payloads
of @octokit/webhooks-examples (tests/data/github), jobs made from `queued`
deliveries that match an org's pools, `completed` for a job never started,
the 25 MiB limit, per-org URLs, and durability before the 2xx."""
import glob
import hashlib
import hmac
import json
import os
import uuid

import kilntest
from kilnapi import Client, FakeAgent, Server, wait_for
from kilntest import run

DATA = os.path.join(kilntest.SRC, "tests", "data", "github")
VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
RUNNER = 'echo "runner for $GH_JOB_ID ($GH_REPOSITORY) on $GH_LABELS as $GH_RUNNER_NAME"'


def sign(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


class WebhookCase(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"),
                             ["--github-runner-command", RUNNER]).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)
        self.anon = Client(self.server.addr, token="")
        self.addCleanup(self.anon.close)
        self.secret = "hook-" + uuid.uuid4().hex
        self.set_secret(self.secret)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def set_secret(self, secret, org=None, token=None):
        args = ["webhook", "secret"] + (["--org", org] if org else [])
        r = run(args, input=secret + "\n", env={"KILN_ADDR": self.server.addr,
                                                 "KILN_TOKEN": token or self.server.token})
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def deliver(self, body, event="workflow_job", secret=None, delivery=None, org=None,
                signature=None, headers=None):
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        h = {"Content-Type": "application/json", "X-GitHub-Event": event,
             "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
             "User-Agent": "GitHub-Hookshot/test"}
        sig = signature if signature is not None else sign(secret or self.secret, body)
        if sig:
            h["X-Hub-Signature-256"] = sig
        h.update(headers or {})
        path = "/v1/webhooks/github" + (f"/{org}" if org else "")
        status, _, data = self.anon.raw("POST", path, body, h)
        return status, (json.loads(data) if data else None)

    def deliveries(self, org=None):
        q = f"&org={org}" if org else ""
        return self.api.ok("GET", f"/v1/github/deliveries?limit=1000{q}")["deliveries"]

    def agent(self, labels, name="k8s-host", **kw):
        a = FakeAgent(self.server.addr, name, labels=labels, **kw)
        a.register()
        self.addCleanup(a.close)
        return a


class SignatureTest(WebhookCase):
    def test_githubs_published_test_vector(self):
        self.assertEqual(sign(VECTOR_SECRET, b"Hello, World!"), VECTOR_SIG)
        self.set_secret(VECTOR_SECRET)
        status, body = self.deliver(b"Hello, World!", event="ping", signature=VECTOR_SIG)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["outcome"], "pong")

    def test_bad_signatures_are_refused_before_parsing(self):
        body = payload("workflow_job-6-queued.json")
        good = sign(self.secret, body)
        bads = {
            "wrong secret": sign("not-the-secret", body),
            "missing": "",
            "sha1": "sha1=" + hmac.new(self.secret.encode(), body, hashlib.sha1).hexdigest(),
            "upper-case hex": "sha256=" + good[7:].upper(),
            "truncated": good[:-1],
            "extended": good + "0",
            "space": good + " ",
        }
        for why, sig in bads.items():
            status, ans = self.deliver(body, signature=sig)
            self.assertEqual(status, 401, why)
            self.assertEqual(ans["error"]["code"], "bad_signature", why)
        # Single-bit flips of the body (every 37th bit; the unit test does all).
        flips = 0
        for bit in range(0, len(body) * 8, 37):
            b = bytearray(body)
            b[bit // 8] ^= 1 << (bit % 8)
            status, _ = self.deliver(bytes(b), signature=good)
            self.assertEqual(status, 401)
            flips += 1
        self.assertGreater(flips, 1000)
        # Garbage with a bad signature is 401, not 400: nothing was parsed.
        self.assertEqual(self.deliver(b"{not json", signature=sign("x", b"{not json"))[0], 401)
        self.assertEqual(self.deliveries(), [])
        # Replaying the good one once: accepted.
        self.assertEqual(self.deliver(body, signature=good)[0], 200)

    def test_two_secrets_during_a_rotation(self):
        old = self.secret
        new = "hook-" + uuid.uuid4().hex
        r = self.set_secret(new)
        self.assertIn("accepted until", r.stderr)
        self.assertEqual(self.deliver(b"{}", event="ping", secret=new)[0], 200)
        self.assertEqual(self.deliver(b"{}", event="ping", secret=old)[0], 200)
        r = run(["webhook", "drop-previous"], env={"KILN_ADDR": self.server.addr,
                                                    "KILN_TOKEN": self.server.token})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.deliver(b"{}", event="ping", secret=old)[0], 401)
        self.assertEqual(self.deliver(b"{}", event="ping", secret=new)[0], 200)

    def test_per_org_urls(self):
        self.server.org("acme")
        owner, _ = self.server.mint("owner", "acme")
        acme_secret = "acme-" + uuid.uuid4().hex
        self.set_secret(acme_secret, token=owner)
        self.assertEqual(self.deliver(b"{}", event="ping", org="acme", secret=acme_secret)[0], 200)
        # The default org's secret does not open acme's URL, nor the reverse.
        self.assertEqual(self.deliver(b"{}", event="ping", org="acme")[0], 401)
        self.assertEqual(self.deliver(b"{}", event="ping", secret=acme_secret)[0], 401)
        # An unknown org reads exactly like a bad signature.
        s1, b1 = self.deliver(b"{}", event="ping", org="nope", secret=acme_secret)
        s2, b2 = self.deliver(b"{}", event="ping", org="acme", secret="wrong")
        self.assertEqual((s1, b1), (s2, b2))
        self.assertEqual(len(self.deliveries(org="acme")), 1)
        self.assertEqual(len(self.deliveries()), 0)


class IntakeTest(WebhookCase):
    def test_queued_makes_one_job_and_replays_make_nothing(self):
        a = self.agent(["linux", "k8s"])
        body = payload("workflow_job-6-queued.json")
        delivery = str(uuid.uuid4())
        status, ans = self.deliver(body, delivery=delivery)
        self.assertEqual(status, 201, ans)
        self.assertEqual(ans["outcome"], "created")
        jid = ans["job"]
        job = self.api.ok("GET", f"/v1/jobs/{jid}")
        self.assertEqual(job["runs_on"], ["k8s"])
        self.assertEqual(job["spec"]["steps"][0]["run"], RUNNER)
        self.assertEqual(job["spec"]["env"]["GH_JOB_ID"], "12877621891")
        self.assertEqual(job["spec"]["env"]["GH_REPOSITORY"], "lineville/elastic-machines-testing")
        self.assertIn("elastic-machines-testing", job["name"])
        # The same delivery again, and the same event under a new delivery id.
        for d in (delivery, str(uuid.uuid4())):
            status, ans = self.deliver(body, delivery=d)
            self.assertEqual(status, 200, ans)
            self.assertTrue(ans["duplicate"])
        self.assertEqual(len(self.api.ok("GET", "/v1/jobs")["jobs"]), 1)
        # A new run attempt is a new job.
        doc = json.loads(body)
        doc["workflow_job"]["run_attempt"] = 2
        status, ans = self.deliver(doc)
        self.assertEqual(status, 201, ans)
        self.assertEqual(len(self.api.ok("GET", "/v1/jobs")["jobs"]), 2)
        lease = a.lease()
        self.assertEqual(lease["job"]["id"], jid)
        self.assertEqual(lease["job"]["spec"]["env"]["GH_RUNNER_NAME"], "kiln-default-12877621891")

    def test_real_payloads_are_recorded(self):
        self.agent(["linux", "k8s"])
        outcomes = {}
        for path in sorted(glob.glob(os.path.join(DATA, "workflow_job-*.json"))):
            name = os.path.basename(path)
            status, ans = self.deliver(payload(name))
            self.assertIn(status, (200, 201), (name, ans))
            outcomes[name] = ans["outcome"]
        self.assertEqual(outcomes["workflow_job-6-queued.json"], "created")
        # ubuntu-latest: no pool of this org has it.
        self.assertIn("no agent", outcomes["workflow_job-5-queued.json"])
        self.assertEqual(outcomes["workflow_job-0-in_progress.json"], "recorded")
        self.assertEqual(outcomes["workflow_job-7-waiting.json"], "recorded")
        # Example 2 repeats example 1's (job, attempt, action): a replay.
        self.assertEqual(outcomes["workflow_job-2-completed.json"], "duplicate")
        self.assertIn("no job", outcomes["workflow_job-1-completed.json"])
        self.assertEqual(len(self.deliveries()), 7)
        r = run(["webhook", "deliveries"], env={"KILN_ADDR": self.server.addr,
                                                 "KILN_TOKEN": self.server.token})
        self.assertRegex(r.stdout, r"RECEIVED\s+DELIVERY\s+EVENT\s+ACTION\s+JOB\s+OUTCOME")
        self.assertIn("created", r.stdout)

    def test_completed_before_it_started_cancels_the_job(self):
        self.agent(["linux", "k8s"])
        doc = json.loads(payload("workflow_job-6-queued.json"))
        status, ans = self.deliver(doc)
        jid = ans["job"]
        doc["action"] = "completed"
        doc["workflow_job"]["conclusion"] = "cancelled"
        status, ans = self.deliver(doc)
        self.assertEqual(status, 200, ans)
        self.assertIn(f"cancelled job {jid}", ans["outcome"])
        job = self.api.ok("GET", f"/v1/jobs/{jid}")
        self.assertEqual(job["state"], "cancelled")
        self.assertIn("GitHub reports", job["message"])

    def test_bad_payloads_and_headers(self):
        for doc in ({"action": "queued"}, {"action": "Queued!", "workflow_job": {"id": 1, "labels": []}},
                    {"action": "queued", "workflow_job": {"id": -1, "labels": []}},
                    {"action": "queued", "workflow_job": {"id": 1, "labels": "k8s"}}):
            status, ans = self.deliver(doc)
            self.assertEqual(status, 400, doc)
        self.assertEqual(self.deliver(b"[1,2]")[0], 400)
        self.assertEqual(self.deliver(b'{"a":1,"a":2}')[0], 400)
        self.assertEqual(self.deliver(b"{}", headers={"X-GitHub-Delivery": "bad id!"})[0], 400)
        # Labels kiln cannot use: recorded, no job.
        doc = json.loads(payload("workflow_job-6-queued.json"))
        doc["workflow_job"]["labels"] = ["self-hosted", "has space"]
        status, ans = self.deliver(doc)
        self.assertEqual(status, 200)
        self.assertIn("not a valid kiln label", ans["outcome"])

    def test_body_limit(self):
        # Announced too large: 413 before any of it is read.
        import socket
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=20) as s:
            s.sendall(b"POST /v1/webhooks/github HTTP/1.1\r\nHost: x\r\n"
                      b"X-GitHub-Event: ping\r\nX-GitHub-Delivery: big\r\n"
                      b"Content-Length: %d\r\n\r\n" % ((25 << 20) + 1))
            data = s.recv(65536)
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:100])
        # Exactly 25 MiB, signed: accepted.
        body = b'{"zen":"' + b"x" * ((25 << 20) - 10) + b'"}'
        self.assertEqual(len(body), 25 << 20)
        status, ans = self.deliver(body, event="ping")
        self.assertEqual(status, 200, ans)

    def test_durable_before_the_answer(self):
        self.agent(["linux", "k8s"])
        status, ans = self.deliver(payload("workflow_job-6-queued.json"), delivery="d-durable")
        self.assertEqual(status, 201)
        self.server.kill9()
        self.server.start()
        self.api = self.server.client()
        self.addCleanup(self.api.close)
        self.anon = Client(self.server.addr, token="")
        self.addCleanup(self.anon.close)
        self.assertEqual([d["delivery"] for d in self.deliveries()], ["d-durable"])
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{ans['job']}")["state"], "queued")
        status, ans = self.deliver(payload("workflow_job-6-queued.json"), delivery="d-durable")
        self.assertEqual(status, 200)
        self.assertTrue(ans["duplicate"])


if __name__ == "__main__":
    kilntest.main()
