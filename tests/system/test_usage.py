"""Usage accounting: what an agent reports with a completion is kept with its
attempt (once), summed into the job (GET /v1/jobs/{id}, kiln describe job),
summed per org over a window (GET /v1/usage, kiln usage -o table|csv|json)
and fed to the job-usage metrics. With a real agent, the measures come from
the sandbox's cgroup."""
import csv
import io
import json
import os

import kilnagent
import kilnmetrics
import kilntest
from kilnapi import FakeAgent, Server, spec


def usage(wall=2000, cpu_user=1500, cpu_system=250, mem=64 << 20, rd=4096, wr=8192, **kw):
    u = {"wall_ms": wall, "cpu_user_ms": cpu_user, "cpu_system_ms": cpu_system,
         "memory_peak_bytes": mem, "io_read_bytes": rd, "io_write_bytes": wr, "oom_kills": 0,
         "pids_peak": 3}
    u.update(kw)
    return u


class UsageCase(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state")).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)
        self.agent = FakeAgent(self.server.addr, "a1", capacity={"slots": 4, "gpus": 2})
        self.agent.register()
        self.addCleanup(self.agent.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def submit(self, **kw):
        status, body = self.api.call("POST", "/v1/jobs", spec(**kw))
        self.assertEqual(status, 201, body)
        return body["jobs"][0]["id"]

    def complete(self, jid, fence, u, state="succeeded", expect=200):
        status, body = self.agent.c.call("POST", f"/v1/jobs/{jid}/complete",
                                         {"fence": fence, "state": state, "exit_code": 0,
                                          "usage": u})
        self.assertEqual(status, expect, body)
        return body

    def kiln(self, *args):
        return kilntest.run(list(args) + ["--server", self.server.addr,
                                          "--token", self.server.token])


class UsageTest(UsageCase):
    def test_job_usage_is_kept_summed_and_shown(self):
        jid = self.submit(name="train", resources={"gpus": 2})
        lease = self.agent.lease()
        self.complete(jid, lease["fence"], usage(executor="gpu"))
        # A retransmission does not count twice, even with other numbers.
        self.complete(jid, lease["fence"], usage(wall=99999))
        j = self.api.ok("GET", f"/v1/jobs/{jid}")
        u = j["usage"]
        self.assertTrue(u["reported"])
        self.assertEqual(u["wall_ms"], 2000)
        self.assertEqual(u["cpu_ms"], 1750)
        self.assertEqual(u["memory_peak_bytes"], 64 << 20)
        self.assertEqual(u["io_read_bytes"], 4096)
        self.assertEqual(u["io_write_bytes"], 8192)
        self.assertEqual(u["gpus"], 2)
        self.assertEqual(u["gpu_ms"], 4000)
        self.assertEqual(u["executor"], "gpu")
        self.assertGreaterEqual(u["queue_wait_ms"], 0)
        self.assertEqual(j["attempts"][0]["usage"]["wall_ms"], 2000)

        r = self.kiln("describe", "job", str(jid))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Usage:", r.stdout)
        self.assertRegex(r.stdout, r"Wall: +2\.00s")
        self.assertRegex(r.stdout, r"CPU: +1\.75s \(1\.50s user, 250ms system\)")
        self.assertRegex(r.stdout, r"Memory peak: +64\.0Mi")
        self.assertRegex(r.stdout, r"GPUs: +2 held, 4\.00s GPU-time")

        m = kilnmetrics.parse(kilnmetrics.fetch(self.server.addr)[2])
        self.assertEqual(kilnmetrics.value(m, "kiln_job_cpu_seconds_total", org="default"), 1.75)
        self.assertEqual(kilnmetrics.value(m, "kiln_job_gpu_seconds_total", org="default"), 4)
        self.assertEqual(kilnmetrics.value(m, "kiln_job_io_write_bytes_total", org="default"), 8192)
        self.assertEqual(kilnmetrics.value(m, "kiln_job_duration_seconds_count", executor="gpu"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_job_memory_peak_bytes_count"), 1)
        self.assertEqual(kilnmetrics.value(m, "kiln_job_memory_peak_bytes_bucket",
                                           le="67108864"), 1)

    def test_a_cancelled_attempt_still_reports_its_usage(self):
        jid = self.submit(name="long")
        lease = self.agent.lease()
        self.agent.status(jid, lease["fence"])
        self.assertEqual(self.api.call("POST", f"/v1/jobs/{jid}/cancel")[0], 200)
        # The agent's result is refused (the job was cancelled), its usage is not.
        self.complete(jid, lease["fence"], usage(wall=700), state="failed", expect=409)
        j = self.api.ok("GET", f"/v1/jobs/{jid}")
        self.assertEqual(j["state"], "cancelled")
        self.assertEqual(j["usage"]["wall_ms"], 700)
        # A fence the job never had records nothing.
        self.complete(jid, lease["fence"] + 1000, usage(wall=5), expect=409)
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jid}")["usage"]["wall_ms"], 700)

    def test_bad_usage_is_refused_with_its_field(self):
        jid = self.submit()
        lease = self.agent.lease()
        for bad, field in ((usage(wall=-1), "usage.wall_ms"), (usage(cpu_user_ms="x"), "usage.cpu_user_ms"),
                           (usage(executor="Bad Name"), "usage.executor"), ([1, 2], "usage")):
            body = self.complete(jid, lease["fence"], bad, expect=400)
            self.assertIn(field, body["error"]["message"])
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jid}")["state"], "leased")

    def test_usage_per_org_over_a_window(self):
        ids = []
        for i in range(3):
            jid = self.submit(name=f"j{i}")
            lease = self.agent.lease()
            self.complete(jid, lease["fence"], usage(wall=1000 * (i + 1), cpu_user=1000, cpu_system=0,
                                                     mem=(i + 1) << 30))
            ids.append(jid)
        body = self.api.ok("GET", "/v1/usage?since=1h")
        self.assertEqual(len(body["orgs"]), 1)
        row = body["orgs"][0]
        self.assertEqual(row["org"], "default")
        self.assertEqual(row["jobs"], 3)
        self.assertEqual(row["attempts"], 3)
        self.assertEqual(row["wall_seconds"], 6)
        self.assertEqual(row["cpu_seconds"], 3)
        self.assertEqual(row["memory_peak_bytes_max"], 3 << 30)
        # peak x wall: 1 GiB x 1 s + 2 GiB x 2 s + 3 GiB x 3 s = 14 GiB-seconds
        self.assertEqual(row["memory_byte_seconds"], 14 * (1 << 30))
        self.assertEqual(body["total"]["jobs"], 3)
        # Windows: nothing before, nothing for another org; bad input is a 400.
        self.assertEqual(self.api.ok("GET", "/v1/usage?since=2h&until=1h")["orgs"], [])
        self.assertEqual(self.api.ok("GET", "/v1/usage?org=acme")["orgs"], [])
        for q, word in (("since=yesterday", "since"), ("org=Bad%20Org", "org"),
                        ("since=1h&until=2h", "empty"),
                        # Not UTF-8: quoted with U+FFFD (it once crashed the server).
                        ("since=%9d%E1", "'\ufffd\ufffd'")):
            status, b = self.api.call("GET", "/v1/usage?" + q)
            self.assertEqual(status, 400, b)
            self.assertIn(word, b["error"]["message"])
        self.assertEqual(self.api.ok("GET", "/v1/usage?since=1h")["total"]["jobs"], 3)

        r = self.kiln("usage", "--since", "1h", "-o", "csv")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["org"], "default")
        self.assertEqual(rows[0]["jobs"], "3")
        self.assertEqual(float(rows[0]["wall_seconds"]), 6.0)
        self.assertEqual(float(rows[0]["cpu_seconds"]), 3.0)
        self.assertTrue(rows[0]["since"].endswith("Z"))

        r = self.kiln("usage", "--org", "default", "-o", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["orgs"][0]["attempts"], 3)

        r = self.kiln("usage")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ORG", r.stdout)
        self.assertRegex(r.stdout, r"default +3 +3 ")

        r = self.kiln("usage", "--org", "nobody")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("No attempt finished", r.stdout)

        r = self.kiln("usage", "--since", "last week")
        self.assertEqual(r.returncode, 1)
        self.assertIn("since", r.stderr)
        r = self.kiln("usage", "-o", "xml")
        self.assertEqual(r.returncode, 2)

    def test_usage_survives_a_restart(self):
        jid = self.submit()
        lease = self.agent.lease()
        self.complete(jid, lease["fence"], usage(wall=1234))
        self.assertEqual(self.server.stop(), 0)
        self.server.start()
        self.api.close()
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jid}")["usage"]["wall_ms"], 1234)
        self.assertEqual(self.api.ok("GET", "/v1/usage")["orgs"][0]["wall_seconds"], 1.234)


class RealAgentUsageTest(kilnagent.JobCase):
    def test_the_agent_measures_cpu_memory_and_io(self):
        self.start_agent()
        # Burn about half a second of CPU, touch 64 MiB of memory, write 4 MiB.
        jid = self.submit(kilnagent.job("burn", [
            "python3 -c \"import time; b = bytearray(64 << 20); t = time.process_time()\n"
            "while time.process_time() - t < 0.5: pass\"",
            "head -c 4194304 /dev/zero > out.bin && sync"]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        u = j["usage"]
        self.assertTrue(u["reported"], u)
        self.assertGreaterEqual(u["wall_ms"], 500)
        self.assertGreaterEqual(u["cpu_ms"], 400)
        self.assertGreaterEqual(u["memory_peak_bytes"], 60 << 20)
        m = kilnmetrics.parse(kilnmetrics.fetch(self.server.addr)[2])
        self.assertGreater(kilnmetrics.value(m, "kiln_job_cpu_seconds_total", org="default"), 0.4)
        self.assertEqual(kilnmetrics.total(m, "kiln_job_duration_seconds_count"), 1)


if __name__ == "__main__":
    kilntest.main()
