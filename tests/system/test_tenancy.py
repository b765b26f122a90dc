"""Multi-tenancy: the first admin token, tokens and roles, revocation and
expiry, private and shared agent pools, job-scoped lease tokens, the org and
token CLI, and the cross-org sweep: every endpoint, with org A's ids, called
with every token of org B — unauthorised successes must be 0."""
import json
import os
import stat
import subprocess
import time

import kilntest
from kilnapi import Client, FakeAgent, Server, spec, wait_for
from kilntest import run


class TenancyCase(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state")).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def client(self, token):
        c = Client(self.server.addr, token=token)
        self.addCleanup(c.close)
        return c

    def agent(self, name, token=None, pool=None, labels=("linux",)):
        a = FakeAgent(self.server.addr, name, token=token, pool=pool, labels=labels)
        a.register()
        self.addCleanup(a.close)
        return a

    def submit(self, client, org=None, **kw):
        path = "/v1/jobs" + (f"?org={org}" if org else "")
        status, body = client.call("POST", path, spec(**kw))
        self.assertEqual(status, 201, body)
        return body["jobs"][0]["id"]


class BootstrapTest(TenancyCase):
    def test_first_admin_token_is_written_0600_and_never_logged(self):
        path = os.path.join(self.server.state_dir, "admin.token")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        tok = self.server.token
        self.assertRegex(tok, r"^kiln_pat_[0-9A-Za-z]{49}$")
        self.assertNotIn(tok, self.server.read_log())
        self.assertIn("admin.token", self.server.read_log())
        me = self.api.ok("GET", "/v1/whoami")
        self.assertEqual((me["role"], me["org"]), ("admin", "default"))
        # A restart keeps it and writes no new one.
        self.server.stop()
        self.server.start()
        self.assertEqual(self.server.token, tok)
        self.assertEqual(self.client(self.server.token).ok("GET", "/v1/whoami")["token_id"], 1)

    def test_every_endpoint_but_healthz_needs_a_token(self):
        anon = self.client("")
        self.assertEqual(anon.call("GET", "/healthz")[0], 200)
        routes = run(["server", "--list-routes"]).stdout.split("\n")
        checked = 0
        for line in filter(None, routes):
            method, pattern = line.split(" ", 1)
            if pattern == "/healthz" or "webhooks" in pattern:
                continue
            path = pattern.replace("{id}", "1").replace("{path*}", "a.txt").replace(
                "{name}", "X").replace("{org}", "default")
            status, _, _ = anon.raw(method, path, b"{}")
            self.assertEqual(status, 401, f"{method} {path}")
            checked += 1
        self.assertGreater(checked, 20)

    def test_bad_tokens_are_401_with_a_reason(self):
        for tok, why in [("nope", "not a kiln token"),
                         ("kiln_pat_" + "A" * 49, "checksum"),
                         ("kiln_xyz_" + "A" * 49, "unknown token type")]:
            status, body = self.client(tok).call("GET", "/v1/jobs")
            self.assertEqual(status, 401, tok)
            self.assertIn(why, body["error"]["message"])
        # Well-formed but unknown.
        tok, _ = self.server.mint("viewer")
        fake = tok[:20] + ("B" if tok[20] != "B" else "C") + tok[21:]
        status, _, hdrs = None, None, None
        status, hdrs, _ = self.client(fake).raw("GET", "/v1/jobs")
        self.assertEqual(status, 401)
        self.assertIn("bearer", hdrs.get("www-authenticate", "").lower())

    def test_admin_token_from_the_state_dir_while_the_server_runs(self):
        r = run(["admin", "token", "--state-dir", self.server.state_dir, "--name", "rescue"])
        self.assertEqual(r.returncode, 0, r.stderr)
        tok = r.stdout.strip()
        self.assertRegex(tok, r"^kiln_pat_")
        me = self.client(tok).ok("GET", "/v1/whoami")
        self.assertEqual(me["role"], "admin")
        self.assertIn("rescue", me["name"])
        r = run(["admin", "token", "--state-dir", os.path.join(self.tmp, "nothing")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("no kiln database", r.stderr)


class RolesTest(TenancyCase):
    def test_roles(self):
        self.server.org("acme")
        owner, _ = self.server.mint("owner", "acme")
        member, _ = self.server.mint("member", "acme")
        viewer, _ = self.server.mint("viewer", "acme")
        agent, _ = self.server.mint("agent", "acme")
        o, m, v, ag = (self.client(t) for t in (owner, member, viewer, agent))
        jid = self.submit(m, name="by-member")
        job = v.ok("GET", f"/v1/jobs/{jid}")
        self.assertEqual(job["org"], "acme")
        # A viewer reads but may not submit or cancel: 403 names what is needed.
        status, body = v.call("POST", "/v1/jobs", spec())
        self.assertEqual(status, 403)
        self.assertIn("member, owner or admin", body["error"]["message"])
        self.assertEqual(v.call("POST", f"/v1/jobs/{jid}/cancel")[0], 403)
        # An agent token does agent things only.
        self.assertEqual(ag.call("GET", "/v1/jobs")[0], 403)
        self.assertEqual(ag.call("GET", f"/v1/jobs/{jid}")[0], 403)
        # Members may not mint tokens; owners mint within their org, never admin.
        self.assertEqual(m.call("POST", "/v1/tokens", {"role": "viewer"})[0], 403)
        status, body = o.call("POST", "/v1/tokens", {"role": "viewer", "name": "ro"})
        self.assertEqual(status, 201, body)
        self.assertEqual(body["org"], "acme")
        self.assertEqual(o.call("POST", "/v1/tokens", {"role": "admin"})[0], 403)
        self.assertEqual(o.call("POST", "/v1/tokens", {"role": "agent", "shared": True})[0], 403)
        self.assertEqual(o.call("POST", "/v1/tokens", {"role": "viewer", "org": "default"})[0], 404)
        self.assertEqual(o.call("POST", "/v1/orgs", {"name": "evil"})[0], 403)
        names = [t["name"] for t in o.ok("GET", "/v1/tokens")["tokens"]]
        self.assertIn("ro", names)
        self.assertNotIn("first admin (bootstrap)", names)
        self.assertEqual(m.call("POST", f"/v1/jobs/{jid}/cancel")[0], 200)

    def test_revocation_is_immediate_and_expiry_works(self):
        tok, tid = self.server.mint("member")
        c = self.client(tok)
        self.assertEqual(c.call("GET", "/v1/jobs")[0], 200)
        self.assertEqual(self.api.call("POST", f"/v1/tokens/{tid}/revoke")[0], 200)
        status, body = c.call("GET", "/v1/jobs")
        self.assertEqual(status, 401)
        self.assertIn("revoked", body["error"]["message"])
        # Revoked stays revoked across a restart.
        self.server.stop()
        self.server.start()
        self.assertEqual(self.client(tok).call("GET", "/v1/jobs")[0], 401)
        short, _ = self.server.mint("viewer", expires_in=400)
        s = self.client(short)
        self.assertEqual(s.call("GET", "/v1/jobs")[0], 200)
        time.sleep(0.5)
        status, body = s.call("GET", "/v1/jobs")
        self.assertEqual(status, 401)
        self.assertIn("expired", body["error"]["message"])

    def test_token_list_shows_no_secret(self):
        self.server.mint("member", name="ci")
        body = self.api.ok("GET", "/v1/tokens")
        text = json.dumps(body)
        self.assertNotIn("kiln_pat_", text)
        self.assertNotIn("hash", text)
        self.assertEqual(sorted(t["role"] for t in body["tokens"]), ["admin", "member"])


class PoolsTest(TenancyCase):
    def test_private_pools_run_only_their_org_and_shared_agents_run_any(self):
        self.server.org("a")
        self.server.org("b")
        a_agent_tok, _ = self.server.mint("agent", "a")
        shared_tok, _ = self.server.mint("agent", shared=True)
        a_member = self.client(self.server.mint("member", "a")[0])
        b_member = self.client(self.server.mint("member", "b")[0])
        pa = self.agent("pool-a", token=a_agent_tok)
        jb = self.submit(b_member, name="b-job")
        # A's private agent never gets B's job.
        self.assertIsNone(pa.lease(wait_ms=300))
        ja = self.submit(a_member, name="a-job")
        lease = pa.lease(wait_ms=2000)
        self.assertEqual(lease["job"]["id"], ja)
        sh = self.agent("shared-1", token=shared_tok)
        lease = sh.lease(wait_ms=2000)
        self.assertEqual(lease["job"]["id"], jb)
        # B's member sees the shared agent but not A's, nor A's job on it.
        agents = {x["name"]: x for x in b_member.ok("GET", "/v1/agents")["agents"]}
        self.assertEqual(set(agents), {"shared-1"})
        self.assertEqual(agents["shared-1"]["pool"], "shared")
        self.assertEqual(b_member.call("GET", f"/v1/agents/{pa.id}")[0], 404)
        # An agent token of A cannot take over B's or the shared agents: the
        # same name registers a new agent of A's own pool (names are per pool).
        status, body = self.client(a_agent_tok).call(
            "POST", "/v1/agents", {"name": "shared-1", "labels": ["linux"]})
        self.assertEqual(status, 201, body)
        self.assertNotEqual(body["id"], sh.id)
        self.assertEqual(self.api.ok("GET", f"/v1/agents/{body['id']}")["pool"], "a")
        self.assertEqual(self.api.ok("GET", f"/v1/agents/{sh.id}")["pool"], "shared")
        status, _ = self.client(a_agent_tok).call("POST", f"/v1/agents/{sh.id}/lease", {"wait_ms": 0})
        self.assertEqual(status, 404)

    def test_job_submitted_for_an_org_without_agents_says_why(self):
        self.server.org("lonely")
        self.agent("only-private", token=self.server.mint("agent", "default")[0])
        c = self.client(self.server.mint("member", "lonely")[0])
        jid = self.submit(c)
        self.assertIn("this org's pool", c.ok("GET", f"/v1/jobs/{jid}")["reason"])


class JobTokenTest(TenancyCase):
    def test_a_job_token_writes_its_own_lease_only(self):
        a = self.agent("a1", token=self.server.mint("agent")[0])
        j1 = self.submit(self.api, name="one")
        j2 = self.submit(self.api, name="two")
        l1 = a.lease()
        l2 = a.lease()
        t1 = l1["token"]
        self.assertRegex(t1, r"^kiln_job_")
        self.assertNotEqual(t1, l2["token"])
        c = self.client(t1)
        f1, f2 = l1["fence"], l2["fence"]
        self.assertEqual(c.call("POST", f"/v1/jobs/{j1}/status", {"fence": f1, "state": "running"})[0], 200)
        # Another job, or another fence of the same job: 403.
        self.assertEqual(c.call("POST", f"/v1/jobs/{j2}/status", {"fence": f2, "state": "running"})[0], 403)
        self.assertEqual(c.call("POST", f"/v1/jobs/{j1}/status", {"fence": f2, "state": "running"})[0], 403)
        # Nothing but the lease's writes.
        self.assertEqual(c.call("GET", f"/v1/jobs/{j1}")[0], 403)
        self.assertEqual(c.call("POST", "/v1/jobs", spec())[0], 403)
        # The agent's own token may not write the job: only the lease token.
        self.assertEqual(a.c.call("POST", f"/v1/jobs/{j1}/complete",
                                  {"fence": f1, "state": "succeeded"})[0], 403)
        self.assertEqual(c.call("POST", f"/v1/jobs/{j1}/complete",
                                {"fence": f1, "state": "succeeded", "exit_code": 0})[0], 200)
        # It died with the lease: a later write is refused (stale fence).
        status, _, _ = c.raw("POST", f"/v1/jobs/{j1}/log?fence={f1}&offset=0", b"late")
        self.assertEqual(status, 409)
        # The token of a new lease of a retried job differs.
        rid = self.api.ok("POST", f"/v1/jobs/{j1}/retry")["jobs"][0]["id"]
        l3 = a.lease()
        self.assertEqual(l3["job"]["id"], rid)
        self.assertNotEqual(l3["token"], t1)

    def test_job_tokens_survive_a_server_restart(self):
        a = self.agent("a1", token=self.server.mint("agent")[0])
        jid = self.submit(self.api)
        lease = a.lease()
        self.server.stop()
        self.server.start()
        c = self.client(lease["token"])
        status, _, _ = c.raw("POST", f"/v1/jobs/{jid}/log?fence={lease['fence']}&offset=0", b"hi\n")
        self.assertEqual(status, 200)


class CliTest(TenancyCase):
    def kiln(self, *args, token=None, **kw):
        env = {"KILN_ADDR": self.server.addr, "KILN_TOKEN": token or self.server.token,
               "XDG_CONFIG_HOME": os.path.join(self.tmp, "cfg")}
        return run(list(args), env=env, **kw)

    def test_org_and_token_commands(self):
        r = self.kiln("org", "create", "acme")
        self.assertEqual((r.returncode, r.stdout), (0, "acme\n"), r.stderr)
        r = self.kiln("org", "create", "acme")
        self.assertEqual(r.returncode, 1)
        self.assertIn("exists", r.stderr)
        self.assertEqual(self.kiln("org", "create", "Bad_Name").returncode, 1)
        r = self.kiln("org", "list")
        self.assertRegex(r.stdout, r"ID\s+NAME")
        self.assertRegex(r.stdout, r"\n2\s+acme")
        orgs = json.loads(self.kiln("org", "list", "-o", "json").stdout)
        self.assertEqual([o["name"] for o in orgs], ["default", "acme"])
        # token create prints the token alone.
        r = self.kiln("token", "create", "--org", "acme", "--role", "owner", "--name", "lead")
        self.assertEqual(r.returncode, 0, r.stderr)
        owner = r.stdout.strip()
        self.assertRegex(r.stdout, r"^kiln_pat_[0-9A-Za-z]{49}\n$")
        r = self.kiln("whoami", token=owner)
        self.assertIn("role owner, org acme", r.stdout)
        r = self.kiln("token", "create", "--role", "agent", token=owner)
        self.assertRegex(r.stdout, r"^kiln_agt_")
        r = self.kiln("token", "list", token=owner)
        self.assertRegex(r.stdout, r"ID\s+NAME\s+ROLE\s+ORG\s+STATE")
        self.assertRegex(r.stdout, r"lead\s+owner\s+acme\s+active")
        self.assertNotIn("kiln_", r.stdout)
        toks = json.loads(self.kiln("token", "list", "-o", "json", token=owner).stdout)
        agent_id = [t["id"] for t in toks if t["role"] == "agent"][0]
        r = self.kiln("token", "revoke", str(agent_id), token=owner)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.kiln("token", "list", token=owner)
        self.assertRegex(r.stdout, r"agent\s+acme\s+revoked")
        self.assertEqual(self.kiln("token", "create", "--role", "wizard").returncode, 1)
        self.assertEqual(self.kiln("token", "create").returncode, 2)
        self.assertEqual(self.kiln("token", "revoke", "x").returncode, 2)
        self.assertEqual(self.kiln("token", "frob").returncode, 2)


class SweepTest(TenancyCase):
    """T29: org B's tokens against every endpoint with org A's ids."""

    def test_cross_org_sweep(self):
        self.server.org("a")
        self.server.org("b")
        a_member = self.client(self.server.mint("member", "a")[0])
        a_tok, a_tok_id = self.server.mint("viewer", "a", name="a-viewer")
        a_agent = self.agent("a-host", token=self.server.mint("agent", "a")[0])
        ja = self.submit(a_member, name="a-secret-build")
        lease = a_agent.lease(wait_ms=2000)
        fa = lease["fence"]
        a_agent.status(ja, fa)
        a_agent.log(ja, fa, 0, b"a's output\n")
        self.assertEqual(a_agent.artifact(ja, fa, "a.txt", b"a's artifact")[0], 201)
        jq = self.submit(a_member, name="a-queued")
        a_owner = self.client(self.server.mint("owner", "a")[0])
        a_secret = "a's secret value " + os.urandom(8).hex()
        self.assertEqual(a_owner.raw("PUT", "/v1/secrets/A_SECRET", a_secret.encode())[0], 200)
        a_secret_version = a_owner.ok("GET", "/v1/secrets")["secrets"][0]["version"]

        # Every kind of token org B has, and a job token of B's own lease.
        b = {role: self.server.mint(role, "b")[0] for role in ("owner", "member", "viewer", "agent")}
        b_agent = self.agent("b-host", token=b["agent"])
        jb = self.submit(self.client(b["member"]), name="b-build")
        bl = b_agent.lease(wait_ms=2000)
        b["job"] = bl["token"]

        ids = {"job": ja, "fence": fa, "agent": a_agent.id, "token": a_tok_id}
        bodies = {
            "/v1/jobs": spec(name="sneaky"),
            "/v1/jobs/{id}/status": {"fence": fa, "state": "running"},
            "/v1/jobs/{id}/complete": {"fence": fa, "state": "succeeded", "exit_code": 0},
            "/v1/agents": {"name": "a-host", "labels": ["linux"]},
            "/v1/agents/{id}/drain": {"draining": True},
            "/v1/agents/{id}/lease": {"wait_ms": 0},
            "/v1/agents/{id}/heartbeat": {"jobs": [{"id": ja, "fence": fa}]},
            "/v1/agents/{id}/release": {"jobs": [{"id": ja, "fence": fa}], "reason": "x"},
            "/v1/tokens": {"role": "viewer", "org": "a"},
            "/v1/orgs": {"name": "b2"},
        }
        a_markers = [b"a-secret-build", b"a-queued", b"a-host", b"a-viewer", b"a's output",
                     b"a's artifact", b'"a"', b'"pool":"a"', a_secret.encode()]
        routes = [l.split(" ", 1) for l in run(["server", "--list-routes"]).stdout.split("\n") if l]
        calls = successes = 0
        failures = []
        for method, pattern in routes:
            if pattern in ("/healthz", "/readyz", "/v1/whoami") or "webhooks" in pattern:
                continue
            kind = "agent" if pattern.startswith("/v1/agents/") else (
                "token" if pattern.startswith("/v1/tokens/") else "job")
            path = pattern.replace("{id}", str(ids[kind])).replace("{path*}", "a.txt").replace(
                "{name}", "A_SECRET")
            for query in ("", f"?org=a&fence={fa}&offset=11"):
                for role, tok in b.items():
                    c = self.client(tok)
                    body = bodies.get(pattern)
                    if isinstance(body, dict):
                        body = json.dumps(body)
                    status, _, data = c.raw(method, path + query,
                                            body if method != "GET" else None)
                    calls += 1
                    # Registering "a-host" in B's pool makes B's own agent
                    # (which B then sees in its agent list and overview).
                    leaked = [m for m in a_markers if m in data and not (
                        pattern in ("/v1/agents", "/v1/overview", "/v1/audit") and m == b"a-host"
                        and f'"id":{a_agent.id},'.encode() not in data)]
                    if method == "GET" and b"A_SECRET" in data:
                        leaked.append(b"A_SECRET")
                    # A {name} route acts on B's own secret; routes without
                    # an org parameter ignore ?org=a (the markers check them).
                    if 200 <= status < 300 and (leaked or "{id}" in pattern):
                        successes += 1
                        failures.append(f"{role} {method} {path + query} -> {status} {data[:120]}")
                    elif leaked:
                        successes += 1
                        failures.append(f"{role} {method} {path + query} leaked {leaked}")
                    elif "{id}" in pattern and status not in (400, 401, 403, 404, 405):
                        failures.append(f"{role} {method} {path + query} -> {status} (expected 403/404)")
        print(f"# sweep: {calls} calls, {successes} unauthorised successes")
        self.assertGreater(calls, 150)
        self.assertEqual(failures, [], "\n".join(failures))
        self.assertEqual(successes, 0)
        # A's state is untouched.
        j = self.api.ok("GET", f"/v1/jobs/{ja}")
        self.assertEqual((j["state"], j["fence"]), ("running", fa))
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jq}")["state"], "queued")
        self.assertFalse(self.api.ok("GET", f"/v1/agents/{a_agent.id}")["draining"])
        self.assertEqual(self.client(a_tok).call("GET", "/v1/jobs")[0], 200)
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jb}")["org"], "b")
        self.assertEqual([(s["name"], s["version"]) for s in a_owner.ok("GET", "/v1/secrets")["secrets"]],
                         [("A_SECRET", a_secret_version)])


if __name__ == "__main__":
    kilntest.main()
