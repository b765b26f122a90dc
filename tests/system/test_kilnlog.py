"""kiln's own log: one line per event on stderr, logfmt or JSON lines
(--log-format / KILN_LOG_FORMAT), with levels and job=, agent=, org=, req=
fields where they apply; every HTTP answer carries its request id
(X-Request-Id) and the log lines of that request carry req=; a job's output
never appears in kiln's log."""
import json
import os
import re
import subprocess
import time

import kilnagent
import kilntest
from kilnapi import FakeAgent, Server, spec, wait_for

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"error", "warn", "info", "debug"}
MARKER = "job-output-7f3a9c"


def json_lines(text):
    """Parses every line as a JSON object with ts, level, msg; returns them."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            o = json.loads(line)
        except ValueError as e:
            raise AssertionError(f"line {n} is not JSON ({e}): {line!r}")
        if not isinstance(o, dict):
            raise AssertionError(f"line {n} is not an object: {line!r}")
        for k in ("ts", "level", "msg"):
            if k not in o:
                raise AssertionError(f"line {n} has no {k!r}: {line!r}")
        if not TS.match(o["ts"]):
            raise AssertionError(f"line {n}: ts {o['ts']!r} is not RFC 3339 UTC")
        if o["level"] not in LEVELS:
            raise AssertionError(f"line {n}: level {o['level']!r}")
        for k, v in o.items():
            if not isinstance(v, str):
                raise AssertionError(f"line {n}: {k} is not a string: {line!r}")
        out.append(o)
    return out


class JsonLogTest(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"), ("--lease-ttl", "1s"),
                             env={"KILN_LOG_FORMAT": "json", "KILN_LOG_LEVEL": "debug"}).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def test_every_line_is_json_with_fields(self):
        a = FakeAgent(self.server.addr, "agent one")  # a name with a space
        a.register()
        self.addCleanup(a.close)
        status, hdrs, body = self.api.raw("POST", "/v1/jobs", spec(name="build"),
                                          {"X-Request-Id": "ci-run-42.submit"})
        self.assertEqual(status, 201, body)
        self.assertEqual(hdrs["x-request-id"], "ci-run-42.submit")
        jid = json.loads(body)["jobs"][0]["id"]
        lease = a.lease()
        a.status(jid, lease["fence"])
        a.log(jid, lease["fence"], 0, MARKER + "\n")
        status, hdrs, _ = a.c.raw("POST", f"/v1/jobs/{jid}/complete",
                                  {"fence": lease["fence"], "state": "succeeded", "exit_code": 0},
                                  {"X-Request-Id": "complete-1"})
        self.assertEqual(status, 200)
        # Server-made ids: 16 hex digits, different per request; a bad client
        # id is replaced rather than echoed.
        ids = set()
        for _ in range(3):
            status, hdrs, _ = self.api.raw("GET", "/v1/jobs/999", headers={"X-Request-Id": "bad id\t"})
            self.assertEqual(status, 404)
            self.assertRegex(hdrs["x-request-id"], r"^[0-9a-f]{16}$")
            ids.add(hdrs["x-request-id"])
        self.assertEqual(len(ids), 3)
        # A lease that expires (no heartbeat): warn lines with job/agent/org.
        j2 = self.api.ok("POST", "/v1/jobs", spec(name="flaky", retries=1))["jobs"][0]["id"]
        a.lease()
        wait_for(lambda: "job queued again" in self.server.read_log(), timeout=15,
                 what="a lease expiry")
        c2 = self.api.ok("POST", f"/v1/jobs/{j2}/cancel")
        self.assertEqual(c2["state"], "cancelled")
        self.assertEqual(self.server.stop(), 0)

        lines = json_lines(self.server.read_log())
        self.assertNotIn(MARKER, self.server.read_log())
        by_msg = {}
        for o in lines:
            by_msg.setdefault(o["msg"], []).append(o)
        sub = by_msg["job submitted"][0]
        self.assertEqual(sub["job"], str(jid))
        self.assertEqual(sub["req"], "ci-run-42.submit")
        self.assertEqual(sub["org"], "default")
        fin = by_msg["job finished"][0]
        self.assertEqual((fin["job"], fin["state"], fin["agent"], fin["org"], fin["req"]),
                         (str(jid), "succeeded", "agent one", "default", "complete-1"))
        reg = by_msg["agent registered"][0]
        self.assertEqual(reg["agent"], "agent one")
        self.assertRegex(reg["req"], r"^[0-9a-f]{16}$")
        lost = [o for o in lines if o["msg"] == "lease ended, job queued again"][0]
        self.assertEqual((lost["level"], lost["job"], lost["agent"], lost["org"]),
                         ("warn", str(j2), "agent one", "default"))
        self.assertIn("did not renew", lost["why"])
        cancel = by_msg["job cancelled"][0]
        self.assertEqual(cancel["job"], str(j2))
        # Every answered request has a debug line with its id and route name.
        reqs = {o["req"]: o for o in by_msg["request"]}
        for i in ids:
            self.assertEqual(reqs[i]["route"], "jobs.get")
            self.assertEqual(reqs[i]["status"], "404")
        self.assertEqual(reqs["complete-1"]["route"], "jobs.complete")
        granted = by_msg["lease granted"][0]
        self.assertEqual((granted["job"], granted["agent"]), (str(jid), "agent one"))

    def test_the_global_flag_selects_the_format(self):
        state = os.path.join(self.tmp, "flag")
        addr_file = state + ".addr"
        log_path = state + ".log"
        with open(log_path, "wb") as log:
            p = subprocess.Popen([kilntest.KILN, "--log-format", "logfmt", "server", "--listen",
                                  "127.0.0.1:0", "--state-dir", state, "--addr-file", addr_file],
                                 stdout=log, stderr=log)
            try:
                wait_for(lambda: os.path.exists(addr_file), timeout=30, what="the server")
            finally:
                p.terminate()
                self.assertEqual(p.wait(timeout=30), 0)
        with open(log_path) as f:
            text = f.read()
        self.assertTrue(text)
        for line in text.splitlines():
            self.assertRegex(line, r'^ts=\S+ level=(error|warn|info|debug) msg=("[^"]*"|\S+)( \S+=("([^"\\]|\\.)*"|\S*))*$')
        self.assertIn('msg="kiln server listening"', text)


class RealAgentLogTest(kilnagent.JobCase):
    agent_args = ()

    def test_agent_log_is_json_and_job_output_stays_out(self):
        a = kilnagent.Agent(self.server.addr, os.path.join(self.tmp, "agent-j"), "j1",
                            cgroup_parent=f"/kiln-systest-{os.getpid()}-log")
        self.addCleanup(kilnagent.remove_cgroup_parent, a.cgroup_parent)
        old = os.environ.get("KILN_LOG_FORMAT")
        os.environ["KILN_LOG_FORMAT"] = "json"
        try:
            a.start()
        finally:
            if old is None:
                del os.environ["KILN_LOG_FORMAT"]
            else:
                os.environ["KILN_LOG_FORMAT"] = old
        self.agents.append(a)
        self.addCleanup(self.cleanup_agent, a)
        wait_for(lambda: any(x["name"] == "j1" and x["online"]
                             for x in self.api.ok("GET", "/v1/agents")["agents"]),
                 timeout=60, what="the agent registered")
        jid = self.submit(kilnagent.job("noisy", [f"echo {MARKER}; echo {MARKER} >&2; exit 3"]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "failed", j)
        self.assertIn(MARKER.encode(), self.log(jid))
        self.assertEqual(a.stop(), 0)
        text = a.read_log()
        self.assertNotIn(MARKER, text)
        lines = json_lines(text)
        done = [o for o in lines if o.get("job") == str(jid)]
        self.assertTrue(done, text[-2000:])
        self.assertTrue(any(o["msg"] == "job finished" for o in done), text[-2000:])


if __name__ == "__main__":
    kilntest.main()
