"""The audit log: every mutating call leaves one record (who, org, token id,
action, target, result, status, source address), also when refused; owners
see their org's, admins all; the hash chain detects a record altered behind
the server's back; and when the record cannot be written the call fails."""
import hashlib
import hmac
import json
import os
import sqlite3
import time
import uuid

import kilntest
from kilnapi import Client, FakeAgent, Server, spec, wait_for
from kilntest import run


class AuditCase(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.state = os.path.join(self.tmp, "state")
        self.server = Server(self.state).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            self.server.stop()

    def records(self, client=None, query=""):
        return (client or self.api).ok("GET", "/v1/audit?limit=10000" + query)["records"]

    def kiln(self, *args, **kw):
        return run(list(args), env={"KILN_ADDR": self.server.addr, "KILN_TOKEN": self.server.token},
                   **kw)


class CompletenessTest(AuditCase):
    def test_every_mutating_call_has_a_record(self):
        base = len(self.records())  # the bootstrap token
        expected = []  # (action, result)

        def call(client, method, path, body=None, action=None, headers=None):
            status, _, data = client.raw(method, path, body, headers or {})
            expected.append((action, status))
            return status, data

        self.api.ok("POST", "/v1/orgs", {"name": "acme"})
        expected.append(("orgs.create", 201))
        owner_tok, owner_id = self.server.mint("owner", "acme", name="lead")
        expected.append(("tokens.create", 201))
        owner = Client(self.server.addr, token=owner_tok)
        self.addCleanup(owner.close)
        viewer_tok, _ = self.server.mint("viewer", "acme")
        expected.append(("tokens.create", 201))
        viewer = Client(self.server.addr, token=viewer_tok)
        self.addCleanup(viewer.close)
        agent_tok, _ = self.server.mint("agent", "acme")
        expected.append(("tokens.create", 201))

        s, d = call(owner, "POST", "/v1/jobs", spec(name="one").encode(), "jobs.submit")
        jid = json.loads(d)["jobs"][0]["id"]
        call(owner, "POST", "/v1/jobs", b"name: [", "jobs.submit")          # 400
        call(viewer, "POST", "/v1/jobs", spec().encode(), "jobs.submit")     # 403
        call(owner, "POST", f"/v1/jobs/{jid}/cancel", None, "jobs.cancel")
        call(owner, "POST", f"/v1/jobs/{jid}/cancel", None, "jobs.cancel")  # 409
        call(owner, "POST", "/v1/jobs/999/cancel", None, "jobs.cancel")     # 404
        call(owner, "POST", f"/v1/jobs/{jid}/retry", None, "jobs.retry")
        call(owner, "PUT", "/v1/secrets/NPM_TOKEN", b"s3cr3t-value", "secrets.set")
        call(owner, "DELETE", "/v1/secrets/NPM_TOKEN", None, "secrets.delete")
        call(owner, "PUT", "/v1/github/webhook-secret", b"hook-secret-1", "github.secret.set")
        ag = FakeAgent(self.server.addr, "h1", token=agent_tok)
        ag.register()
        self.addCleanup(ag.close)
        expected.append(("agents.register", 201))
        call(owner, "POST", f"/v1/agents/{ag.id}/drain", b"{}", "agents.drain")
        call(owner, "POST", f"/v1/tokens/{owner_id}/revoke", None, "tokens.revoke")
        # A signed webhook delivery is recorded; an unsigned one is not (no caller).
        body = b"{}"
        sig = "sha256=" + hmac.new(b"hook-secret-1", body, hashlib.sha256).hexdigest()
        anon = Client(self.server.addr, token="")
        self.addCleanup(anon.close)
        h = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": str(uuid.uuid4())}
        call(anon, "POST", "/v1/webhooks/github/acme", body, "webhooks.github.org",
             dict(h, **{"X-Hub-Signature-256": sig}))
        anon.raw("POST", "/v1/webhooks/github/acme", body,
                 dict(h, **{"X-Hub-Signature-256": "sha256=" + "0" * 64}))
        # Reads leave nothing.
        self.api.ok("GET", "/v1/jobs")
        self.api.ok("GET", f"/v1/jobs/{jid}")

        recs = self.records()[base:]
        got = [(r["action"], r["status"]) for r in recs]
        self.assertEqual(got, expected)
        by_action = {}
        for r in recs:
            by_action.setdefault(r["action"], []).append(r)
        denied = [r for r in recs if r["status"] == 403][0]
        self.assertEqual(denied["result"], "denied")
        self.assertIn("token", denied["actor"])
        cancel = by_action["jobs.cancel"]
        self.assertEqual([c["result"] for c in cancel], ["ok", "conflict", "not_found"])
        self.assertEqual(cancel[0]["target"], f"job {jid}")
        self.assertEqual(cancel[0]["token_id"], owner_id)
        self.assertEqual(cancel[0]["org"], "acme")
        self.assertEqual(cancel[0]["source"], "127.0.0.1")
        self.assertEqual(by_action["secrets.set"][0]["target"], "secret NPM_TOKEN")
        self.assertNotIn("s3cr3t-value", json.dumps(recs))
        self.assertIn("github webhook", by_action["webhooks.github.org"][0]["actor"])
        # The owner of acme sees acme's records only; the admin all of them.
        mine = self.records(Client(self.server.addr, token=self.server.mint("owner", "acme")[0]))
        self.assertTrue(mine)
        self.assertTrue(all(r["org"] == "acme" for r in mine))
        self.assertEqual(viewer.raw("GET", "/v1/audit")[0], 403)

    def test_local_admin_token_and_since(self):
        r = run(["admin", "token", "--state-dir", self.state, "--name", "rescue"])
        self.assertEqual(r.returncode, 0, r.stderr)
        last = self.records()[-1]
        self.assertEqual((last["action"], last["source"]), ("tokens.create", "local"))
        self.assertIn("kiln admin token", last["actor"])
        self.assertEqual(self.records(query="&since=2099-01-01T00:00:00Z"), [])
        self.assertEqual(len(self.records(query="&since=1h")), len(self.records()))
        r = self.kiln("audit")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"SEQ\s+AT\s+ORG\s+ACTOR\s+ACTION\s+TARGET\s+RESULT\s+SOURCE")
        self.assertIn("tokens.create", r.stdout)


class IntegrityTest(AuditCase):
    def test_tampering_is_detected(self):
        for i in range(5):
            self.api.ok("POST", "/v1/jobs", spec(name=f"j{i}"))
        r = self.kiln("audit", "--verify")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("intact: 6 records", r.stdout)
        db = sqlite3.connect(os.path.join(self.state, "kiln.db"))
        # The triggers refuse edits and deletions...
        with self.assertRaises(sqlite3.DatabaseError):
            db.execute("UPDATE audit SET actor = 'someone else' WHERE seq = 3")
        with self.assertRaises(sqlite3.DatabaseError):
            db.execute("DELETE FROM audit WHERE seq = 4")
        # ...and a forger who drops them breaks the chain.
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute("DELETE FROM audit WHERE seq = 4")
        db.commit()
        db.close()
        r = self.kiln("audit", "--verify")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("BROKEN at record 5", r.stdout)
        self.assertIn("hash chain is broken", self.server.read_log())

    def test_calls_fail_when_the_record_cannot_be_written(self):
        jid = self.api.ok("POST", "/v1/jobs", spec(name="before"))["jobs"][0]["id"]
        db = sqlite3.connect(os.path.join(self.state, "kiln.db"), timeout=30)
        db.execute("CREATE TRIGGER audit_sink_broken BEFORE INSERT ON audit "
                   "BEGIN SELECT RAISE(ABORT, 'audit sink unwritable'); END")
        db.commit()
        # The call is not acknowledged: the server stops rather than answer
        # without its audit record (fail-stop).
        try:
            status, _, _ = self.api.raw("POST", "/v1/jobs", spec(name="after"), timeout=30)
        except OSError:
            status = None
        self.assertNotEqual(status, 201)
        wait_for(lambda: self.server.proc.poll() is not None, timeout=30, what="the server to stop")
        self.server.stop()
        db.execute("DROP TRIGGER audit_sink_broken")
        db.commit()
        db.close()
        self.server.start()
        c = self.server.client()
        self.addCleanup(c.close)
        names = [j["name"] for j in c.ok("GET", "/v1/jobs")["jobs"]]
        self.assertEqual(names, ["before"])
        self.assertEqual(c.ok("GET", f"/v1/jobs/{jid}")["state"], "queued")
        self.assertIn("store failure", self.server.read_log())


if __name__ == "__main__":
    kilntest.main()
