"""Secrets: set (from stdin) / list / delete, never returned by the API;
sealed per org with (org, name, version) bound, so a moved ciphertext does not
open; injected into a lease only for jobs of the org whose spec names them;
master key rotation online; masked in real jobs' logs; and 1,000 planted
secret values found nowhere on disk (database, WAL, SHM, logs, artifacts,
backups)."""
import base64
import json
import os
import secrets as pysecrets
import sqlite3
import subprocess
import urllib.parse

import kilntest
from kilnagent import JobCase, job
from kilnapi import Client, FakeAgent, Server, spec, wait_for
from kilntest import run


def value(n=32):
    return "v" + pysecrets.token_urlsafe(n)


class SecretCase(kilntest.TempDirTestCase):
    server_args = ()

    def setUp(self):
        super().setUp()
        self.state = os.path.join(self.tmp, "state")
        self.server = Server(self.state, self.server_args).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def put(self, name, val, org=None, client=None, expect=200):
        q = f"?org={org}" if org else ""
        status, _, body = (client or self.api).raw("PUT", f"/v1/secrets/{name}{q}", val.encode())
        self.assertEqual(status, expect, body)
        return json.loads(body)

    def kiln(self, *args, token=None, **kw):
        env = {"KILN_ADDR": self.server.addr, "KILN_TOKEN": token or self.server.token}
        return run(list(args), env=env, **kw)

    def agent(self, name="a1", **kw):
        a = FakeAgent(self.server.addr, name, **kw)
        a.register()
        self.addCleanup(a.close)
        return a


class ApiTest(SecretCase):
    def test_set_list_delete_and_never_returned(self):
        v1 = value()
        r = self.kiln("secret", "set", "NPM_TOKEN", input=v1 + "\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("version", r.stderr)
        r = self.kiln("secret", "list")
        self.assertRegex(r.stdout, r"NAME\s+VERSION\s+UPDATED\nNPM_TOKEN\s+\d+")
        listed = json.loads(self.kiln("secret", "list", "-o", "json").stdout)
        self.assertEqual([s["name"] for s in listed], ["NPM_TOKEN"])
        first = listed[0]["version"]
        self.assertNotIn(v1, json.dumps(listed))
        # Setting again makes a new version (never reused).
        self.kiln("secret", "set", "NPM_TOKEN", input=value())
        again = json.loads(self.kiln("secret", "list", "-o", "json").stdout)[0]["version"]
        self.assertGreater(again, first)
        # No endpoint gives a value back: GET on the secret is not a route.
        status, _, _ = self.api.raw("GET", "/v1/secrets/NPM_TOKEN")
        self.assertEqual(status, 405)
        r = self.kiln("secret", "delete", "NPM_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.kiln("secret", "delete", "NPM_TOKEN")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not found", r.stderr)
        self.assertNotIn(v1, self.server.read_log())

    def test_bad_names_values_and_roles(self):
        for bad in ("lower", "1X", "A-B", "X" * 129):
            self.assertEqual(self.api.raw("PUT", f"/v1/secrets/{bad}", b"v")[0], 400, bad)
        self.assertEqual(self.api.raw("PUT", "/v1/secrets/A", b"")[0], 400)
        self.assertEqual(self.api.raw("PUT", "/v1/secrets/A", b"a\0b")[0], 400)
        self.assertEqual(self.api.raw("PUT", "/v1/secrets/A", b"\xff\xfe")[0], 400)
        self.assertEqual(self.api.raw("PUT", "/v1/secrets/A", b"x" * (48 * 1024 + 1))[0], 400)
        self.assertEqual(self.kiln("secret", "set", "A", input="").returncode, 2)
        member = Client(self.server.addr, token=self.server.mint("member")[0])
        self.addCleanup(member.close)
        self.assertEqual(member.raw("PUT", "/v1/secrets/A", b"v")[0], 403)
        self.assertEqual(member.call("GET", "/v1/secrets")[0], 200)

    def test_orgs_do_not_share_secrets(self):
        self.server.org("a")
        self.server.org("b")
        a_owner = Client(self.server.addr, token=self.server.mint("owner", "a")[0])
        b_owner = Client(self.server.addr, token=self.server.mint("owner", "b")[0])
        self.addCleanup(a_owner.close)
        self.addCleanup(b_owner.close)
        va = value()
        self.put("DEPLOY_KEY", va, client=a_owner)
        self.assertEqual(b_owner.call("GET", "/v1/secrets")[1]["secrets"], [])
        self.assertEqual(b_owner.call("GET", "/v1/secrets?org=a")[0], 404)
        self.assertEqual(b_owner.raw("DELETE", "/v1/secrets/DEPLOY_KEY?org=a")[0], 404)
        self.assertEqual(b_owner.raw("DELETE", "/v1/secrets/DEPLOY_KEY")[0], 404)
        # B's job may not name A's secret: B has no such secret.
        status, body = b_owner.call("POST", "/v1/jobs", spec(secrets=["DEPLOY_KEY"]))
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["code"], "unknown_secret")
        # A's job gets it in its lease, on A's pool.
        jid = a_owner.ok("POST", "/v1/jobs", spec(secrets=["DEPLOY_KEY"]))["jobs"][0]["id"]
        ag = self.agent("a-host", token=self.server.mint("agent", "a")[0])
        lease = ag.lease(wait_ms=2000)
        self.assertEqual(lease["job"]["id"], jid)
        self.assertEqual(lease["secrets"], {"DEPLOY_KEY": va})

    def test_only_named_secrets_reach_the_lease(self):
        vals = {n: value() for n in ("ONE", "TWO", "THREE")}
        for n, v in vals.items():
            self.put(n, v)
        self.api.ok("POST", "/v1/jobs", spec(name="some", secrets=["ONE", "THREE"]))
        self.api.ok("POST", "/v1/jobs", spec(name="none"))
        a = self.agent()
        l1 = a.lease()
        self.assertEqual(l1["secrets"], {"ONE": vals["ONE"], "THREE": vals["THREE"]})
        l2 = a.lease()
        self.assertNotIn("secrets", l2)
        # Not in the job as the API shows it.
        self.assertNotIn(vals["ONE"], json.dumps(self.api.ok("GET", f"/v1/jobs/{l1['job']['id']}")))


class KeyTest(SecretCase):
    def lease_secrets(self, names):
        self.api.ok("POST", "/v1/jobs", spec(secrets=names))
        a = FakeAgent(self.server.addr, "a-" + pysecrets.token_hex(4))
        a.register()
        self.addCleanup(a.close)
        return a.lease(wait_ms=2000).get("secrets", {})

    def key_ids(self):
        db = sqlite3.connect(os.path.join(self.state, "kiln.db"))
        try:
            return {row[0] for row in db.execute("SELECT key_id FROM org_keys")}
        finally:
            db.close()

    def test_rotate_key_online_and_after_a_restart(self):
        self.server.org("acme")
        owner = Client(self.server.addr, token=self.server.mint("owner", "acme")[0])
        self.addCleanup(owner.close)
        v1, v2 = value(), value()
        self.put("A", v1)
        self.put("B", v2, client=owner)
        before = self.key_ids()
        self.assertEqual(len(before), 1)
        with open(os.path.join(self.state, "master.key")) as f:
            old_key = f.read()
        r = run(["admin", "rotate-key"], env={"KILN_ADDR": self.server.addr,
                                                "KILN_TOKEN": self.server.token})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("3 data keys re-wrapped", r.stdout)  # server, default, acme
        after = self.key_ids()
        self.assertEqual(len(after), 1)
        self.assertNotEqual(after, before)
        with open(os.path.join(self.state, "master.key")) as f:
            self.assertNotEqual(f.read(), old_key)
        self.assertFalse(os.path.exists(os.path.join(self.state, "master.key.next")))
        self.assertEqual(self.lease_secrets(["A"]), {"A": v1})
        # The job tokens of running leases are unchanged by a rotation, and
        # after a restart on the new key file everything still opens.
        self.server.stop()
        self.server.start()
        self.assertEqual(self.lease_secrets(["A"]), {"A": v1})
        # Started with the old key, the server refuses (it names both ids).
        self.server.stop()
        old = os.path.join(self.tmp, "old.key")
        with open(old, "w") as f:
            f.write(old_key)
        os.chmod(old, 0o600)
        r = run(["server", "--state-dir", self.state, "--listen", "127.0.0.1:0",
                 "--master-key-file", old], timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("wrapped under master key", r.stderr)

    def test_environment_key_needs_the_new_key_given(self):
        self.server.stop()
        k1 = os.urandom(32).hex()
        state = os.path.join(self.tmp, "env-state")
        srv = Server(state, env={"KILN_MASTER_KEY": k1}).start()
        self.addCleanup(srv.stop)
        c = srv.client()
        self.addCleanup(c.close)
        self.assertFalse(os.path.exists(os.path.join(state, "master.key")))
        v = value()
        self.assertEqual(c.raw("PUT", "/v1/secrets/X", v.encode())[0], 200)
        status, body = c.call("POST", "/v1/admin/rotate-key", {})
        self.assertEqual(status, 400)
        self.assertIn("KILN_MASTER_KEY", body["error"]["message"])
        k2 = base64.b64encode(os.urandom(32)).decode()
        keyfile = os.path.join(self.tmp, "new.key")
        with open(keyfile, "w") as f:
            f.write(k2 + "\n")
        r = run(["admin", "rotate-key", "--new-key-file", keyfile],
                env={"KILN_ADDR": srv.addr, "KILN_TOKEN": srv.token})
        self.assertEqual(r.returncode, 0, r.stderr)
        srv.stop()
        srv.env = {"KILN_MASTER_KEY": k2}
        srv.start()
        srv.client().ok("POST", "/v1/jobs", spec(secrets=["X"]))
        a = FakeAgent(srv.addr, "e1")
        a.register()
        self.addCleanup(a.close)
        self.assertEqual(a.lease(wait_ms=2000)["secrets"], {"X": v})
        # The key is wiped from the server's environment.
        with open(f"/proc/{srv.proc.pid}/environ", "rb") as f:
            env = f.read()
        self.assertNotIn(k2.encode(), env)
        self.assertNotIn(k1.encode(), env)

    def test_a_moved_ciphertext_does_not_open(self):
        self.server.org("other")
        owner = Client(self.server.addr, token=self.server.mint("owner", "other")[0])
        self.addCleanup(owner.close)
        va, vb, vo = value(), value(), value()
        self.put("A", va)
        self.put("B", vb)
        self.put("A", vo, client=owner)
        self.server.stop()
        db = sqlite3.connect(os.path.join(self.state, "kiln.db"))
        rows = {(o, n): s for o, n, s in db.execute("SELECT org_id, name, sealed FROM secrets")}
        # Swap A and B of the default org; put the other org's A in default's C.
        db.execute("UPDATE secrets SET sealed = ? WHERE org_id = 1 AND name = 'A'", (rows[(1, "B")],))
        db.execute("UPDATE secrets SET sealed = ? WHERE org_id = 1 AND name = 'B'", (rows[(1, "A")],))
        db.execute("INSERT INTO secrets (org_id, name, version, sealed, created_at, updated_at) "
                   "SELECT 1, 'C', version, sealed, 0, 0 FROM secrets WHERE org_id = 2 AND name = 'A'")
        # A flipped bit.
        flipped = bytearray(rows[(2, "A")])
        flipped[30] ^= 1
        db.execute("UPDATE secrets SET sealed = ? WHERE org_id = 2 AND name = 'A'", (bytes(flipped),))
        db.commit()
        db.close()
        self.server.start()
        self.assertEqual(self.lease_secrets(["A", "B", "C"]), {})
        self.assertIn("secret=A", self.server.read_log())


class MaskTest(JobCase):
    def test_values_are_masked_in_real_job_logs(self):
        self.start_agent()
        plain, split = value(20), value(20)
        urly = "ab/cd+ef gh&" + value(8)
        for n, v in (("PLAIN", plain), ("SPLIT", split), ("URLY", urly)):
            status, _, body = self.api.raw("PUT", f"/v1/secrets/{n}", v.encode())
            self.assertEqual(status, 200, body)
        b64 = base64.b64encode(plain.encode()).decode()
        url = urllib.parse.quote(urly, safe="")
        steps = [
            'echo "plain: $PLAIN"',
            # Split across two writes with a pause between them.
            'printf "%s" "${SPLIT:0:7}"; sleep 0.3; printf "%s\\n" "${SPLIT:7}"',
            'printf "%s" "$PLAIN" | base64',
            "python3 -c 'import os, urllib.parse as u; print(\"url:\", "
            "u.quote(os.environ[\"URLY\"], safe=\"\"))'",
        ]
        jid = self.submit(job("masked", steps, secrets=["PLAIN", "SPLIT", "URLY"]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        log = self.log(jid)
        for v in (plain, split, b64.rstrip("="), plain[5:-5], urly, url):
            self.assertNotIn(v.encode(), log, log)
        self.assertIn(b"plain: ***", log)
        self.assertIn(b"url: ***", log)


class PlantedTest(JobCase):
    """1,000 secret values: none may be found anywhere on disk."""

    def test_thousand_planted_secrets_are_found_nowhere(self):
        self.start_agent()
        vals = {f"S{i:04d}": value(24) for i in range(1000)}
        for n, v in vals.items():
            status, _, body = self.api.raw("PUT", f"/v1/secrets/{n}", v.encode())
            self.assertEqual(status, 200, body)
        # A few through the CLI as a user would.
        for n in ("S0000", "S0001"):
            r = run(["secret", "set", n], input=vals[n] + "\n",
                    env={"KILN_ADDR": self.server.addr, "KILN_TOKEN": self.server.token})
            self.assertEqual(r.returncode, 0, r.stderr)
        # Jobs that print some of them, plainly and base64-encoded, and make
        # an artifact of something else.
        names = sorted(vals)[:120]
        jids = []
        for k in range(0, len(names), 40):
            batch = names[k:k + 40]
            steps = [" ; ".join(f'echo "{n}=${n}"' for n in batch),
                     f'printf "%s" "${batch[0]}" | base64',
                     "echo done > out.txt"]
            jids.append(self.submit(job(f"leaky-{k}", steps, secrets=batch,
                                        artifacts=["out.txt"])))
        for jid in jids:
            j = self.wait_job(jid)
            self.assertEqual(j["state"], "succeeded", j)
            self.assertIn(b"=***", self.log(jid))
        # A rotation too, then backups of the live database.
        self.assertEqual(self.api.call("POST", "/v1/admin/rotate-key", {})[0], 200)
        backup = os.path.join(self.tmp, "backup.db")
        src = sqlite3.connect(os.path.join(self.server.state_dir, "kiln.db"))
        dst = sqlite3.connect(backup)
        src.backup(dst)
        dst.close()
        src.execute(f"VACUUM INTO '{os.path.join(self.tmp, 'vacuum.db')}'")
        src.close()
        for a in self.agents:
            a.stop()
        self.stop_server()
        files = []
        for root in (self.server.state_dir, self.tmp):
            for d, _, fs in os.walk(root):
                files += [os.path.join(d, f) for f in fs]
        files = sorted(set(files))
        self.assertTrue(any(f.endswith("kiln.db-wal") or f.endswith("kiln.db") for f in files))
        hits = []
        needles = [v.encode() for v in vals.values()]
        scanned = 0
        for path in files:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            scanned += len(data)
            for n in needles:
                if n in data:
                    hits.append((path, n[:8]))
        print(f"# planted: {len(needles)} values, {len(files)} files, {scanned} bytes, "
              f"{len(hits)} hits")
        self.assertGreater(len(files), 10)
        self.assertEqual(hits, [])


if __name__ == "__main__":
    kilntest.main()
