"""The client verbs against a real server, with a scripted fake agent doing
the work: kiln submit (--wait, --follow), get (formats, --watch), describe,
logs (-f), cancel, retry, artifacts (--get); where the address and token
come from (flags, KILN_ADDR/KILN_TOKEN, the config file)."""
import json
import os
import signal
import subprocess
import threading
import time

import yaml

import kilntest
from kilnapi import FakeAgent, Server, wait_for
from kilntest import run


class ClientCase(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state")).start()
        self.addCleanup(self.stop_server)
        self.env = {"KILN_ADDR": self.server.addr, "KILN_TOKEN": self.server.token,
                    "XDG_CONFIG_HOME": os.path.join(self.tmp, "cfg")}
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def kiln(self, *args, **kw):
        env = dict(self.env)
        env.update(kw.pop("env", {}))
        return run(list(args), env=env, **kw)

    def agent(self, name="a1", **kw):
        a = FakeAgent(self.server.addr, name, **kw)
        a.register()
        self.addCleanup(a.close)
        return a

    def spec_file(self, text, name="job.yaml"):
        return self.write(name, text)

    def run_jobs(self, agent, outcomes, log=b""):
        """A thread playing agent: takes len(outcomes) jobs, writes `log`,
        completes each with the next outcome (state, exit code)."""
        def work():
            for state, code in outcomes:
                lease = None
                while lease is None:
                    lease = agent.lease(wait_ms=5000)
                jid, fence = lease["job"]["id"], lease["fence"]
                agent.status(jid, fence)
                off = 0
                for line in log.splitlines(keepends=True):
                    agent.log(jid, fence, off, line)
                    off += len(line)
                    time.sleep(0.01)
                agent.complete(jid, fence, state, code)
        t = threading.Thread(target=work)
        t.start()
        self.addCleanup(t.join, 30)
        return t


SIMPLE = "name: build\nruns-on: [linux]\nsteps:\n  - run: make test\n"


class SubmitTest(ClientCase):
    def test_submit_prints_the_jobs(self):
        r = self.kiln("submit", "-f", self.spec_file(SIMPLE))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^ID\s+NAME\s+STATE")
        self.assertRegex(r.stdout, r"\n1\s+build\s+queued")
        r = self.kiln("submit", "-o", "json", "-f", self.spec_file(
            SIMPLE + "matrix:\n  os: [a, b, c]\n"))
        jobs = json.loads(r.stdout)
        self.assertEqual([j["name"] for j in jobs], ["build (a)", "build (b)", "build (c)"])
        r = self.kiln("submit", "-o", "yaml", "-f", "-", input=SIMPLE)
        self.assertEqual(yaml.safe_load(r.stdout)[0]["state"], "queued")

    def test_invalid_spec_reads_like_kiln_validate(self):
        bad = self.spec_file("name: build\nruns-on: [linux]\nsteps:\n  - run: make\n    timeout: soon\n",
                             "bad.yaml")
        r = self.kiln("submit", "-f", bad)
        self.assertEqual(r.returncode, 1)
        v = self.kiln("validate", bad)
        self.assertEqual(v.returncode, 1)
        self.assertEqual(r.stderr.strip(), v.stderr.strip())
        self.assertIn("bad.yaml:5:", r.stderr)

    def test_wait_and_follow(self):
        a = self.agent()
        self.run_jobs(a, [("succeeded", 0)], log=b"compiling\nlinking\ndone\n")
        r = self.kiln("submit", "--follow", "-f", self.spec_file(SIMPLE), timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "compiling\nlinking\ndone\njob 1 build: succeeded (exit code 0)\n")
        self.run_jobs(a, [("failed", 3)])
        r = self.kiln("submit", "--wait", "-f", self.spec_file(SIMPLE), timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("job 2 build: failed (exit code 3)", r.stdout)

    def test_no_server(self):
        r = self.kiln("submit", "-f", self.spec_file(SIMPLE), env={"KILN_ADDR": "127.0.0.1:1"})
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot reach the kiln server at http://127.0.0.1:1", r.stderr)
        r = self.kiln("submit")
        self.assertEqual(r.returncode, 2)


class GetTest(ClientCase):
    def test_get_jobs_and_agents_in_every_format(self):
        for i in range(3):
            self.kiln("submit", "-f", self.spec_file(SIMPLE.replace("build", f"b{i}")))
        a = self.agent("host-1", labels=["linux", "gpu"], capacity={"slots": 2, "memory": "8Gi"})
        lease = a.lease()
        a.status(lease["job"]["id"], lease["fence"])
        r = self.kiln("get", "jobs")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertRegex(lines[0], r"^ID\s+NAME\s+STATE\s+ATTEMPT\s+AGENT\s+AGE$")
        self.assertRegex(lines[3], r"^1\s+b0\s+running\s+1/1\s+host-1\s")
        r = self.kiln("get", "jobs", "-o", "wide")
        self.assertIn("RUNS-ON", r.stdout)
        jobs = json.loads(self.kiln("get", "jobs", "-o", "json").stdout)
        self.assertEqual([j["id"] for j in jobs], [3, 2, 1])
        self.assertEqual(yaml.safe_load(self.kiln("get", "jobs", "-o", "yaml").stdout), jobs)
        self.assertEqual(len(json.loads(self.kiln("get", "jobs", "--state", "queued", "-o", "json").stdout)), 2)
        self.assertEqual([j["id"] for j in json.loads(self.kiln("get", "jobs", "2", "-o", "json").stdout)], [2])
        r = self.kiln("get", "agents")
        self.assertRegex(r.stdout, r"\n1\s+host-1\s+online\s+1/2\s+linux,gpu\s")
        agents = yaml.safe_load(self.kiln("get", "agents", "-o", "yaml").stdout)
        self.assertEqual(agents[0]["capacity"]["memory"], 8 << 30)
        r = self.kiln("get", "jobs", "99")
        self.assertEqual(r.returncode, 1)
        self.assertIn("job 99 not found", r.stderr)
        self.assertEqual(self.kiln("get", "things").returncode, 2)

    def test_watch_redraws_on_change(self):
        env = dict(os.environ, **self.env)
        p = subprocess.Popen([kilntest.KILN, "get", "jobs", "--watch"], stdout=subprocess.PIPE,
                             text=True, env=env)
        self.addCleanup(p.wait, 10)
        self.addCleanup(p.stdout.close)
        self.assertEqual(p.stdout.readline(), "no jobs\n")
        self.kiln("submit", "-f", self.spec_file(SIMPLE))
        # Not a terminal: each redraw is separated by an empty line.
        self.assertEqual(p.stdout.readline(), "\n")
        self.assertRegex(p.stdout.readline(), r"^ID\s+NAME")
        self.assertRegex(p.stdout.readline(), r"^1\s+build\s+queued")
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(10), 0)

    def test_describe(self):
        self.kiln("submit", "-f", self.spec_file(SIMPLE))
        a = self.agent()
        lease = a.lease()
        a.artifact(1, lease["fence"], "dist/out.bin", b"binary")
        a.complete(1, lease["fence"], "failed", 2, "step 'make test' exited 2")
        r = self.kiln("describe", "job", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("State:       failed (exit code 2)", r.stdout)
        self.assertRegex(r.stdout, r"\n  1\s+failed\s+a1\s+%d\s" % lease["fence"])
        self.assertIn("dist/out.bin", r.stdout)
        self.assertIn("run: make test", r.stdout)
        j = json.loads(self.kiln("describe", "job", "1", "-o", "json").stdout)
        self.assertEqual(j["attempts"][0]["exit_code"], 2)
        r = self.kiln("describe", "agent", str(a.id))
        self.assertIn("Name:        a1", r.stdout)
        self.assertEqual(self.kiln("describe", "job", "7").returncode, 1)


class JobControlTest(ClientCase):
    def test_logs_follow_cancel_retry(self):
        self.kiln("submit", "-f", self.spec_file(SIMPLE))
        a = self.agent()
        lease = a.lease()
        a.status(1, lease["fence"])
        a.log(1, lease["fence"], 0, b"line one\n")
        env = dict(os.environ, **self.env)
        p = subprocess.Popen([kilntest.KILN, "logs", "-f", "1"], stdout=subprocess.PIPE, env=env)
        self.addCleanup(p.stdout.close)
        self.assertEqual(p.stdout.readline(), b"line one\n")
        a.log(1, lease["fence"], 9, b"line two\n")
        self.assertEqual(p.stdout.readline(), b"line two\n")
        r = self.kiln("cancel", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "job 1 cancelled (was running)\n")
        self.assertEqual(p.wait(20), 0)  # the follow ends with the job
        self.assertEqual(self.kiln("logs", "1").stdout, "line one\nline two\n")
        self.assertEqual(self.kiln("logs", "--offset", "5", "1").stdout, "one\nline two\n")
        r = self.kiln("cancel", "1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("already ended (cancelled)", r.stderr)
        r = self.kiln("retry", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "job 1 retried as job 2\n")
        self.assertEqual(self.api.ok("GET", "/v1/jobs/2")["retry_of"], 1)
        self.assertEqual(self.kiln("retry", "2").returncode, 1)  # still queued
        self.assertEqual(self.kiln("logs", "x").returncode, 2)

    def test_artifacts_list_and_get(self):
        self.kiln("submit", "-f", self.spec_file(SIMPLE))
        a = self.agent()
        lease = a.lease()
        data = os.urandom(200000)
        a.artifact(1, lease["fence"], "dist/app.bin", data)
        r = self.kiln("artifacts", "1")
        self.assertRegex(r.stdout, r"dist/app.bin\s+200000\s+1\s+[0-9a-f]{64}")
        r = self.kiln("artifacts", "1", "--get", "dist/app.bin", cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.tmp, "app.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        out = os.path.join(self.tmp, "copy.bin")
        self.assertEqual(self.kiln("artifacts", "1", "--get", "dist/app.bin", "-o", out).returncode, 0)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)
        r = subprocess.run([kilntest.KILN, "artifacts", "1", "--get", "dist/app.bin", "-o", "-"],
                           capture_output=True, env=dict(os.environ, **self.env), timeout=60)
        self.assertEqual(r.stdout, data)
        r = self.kiln("artifacts", "1", "--get", "nope")
        self.assertEqual(r.returncode, 1)
        self.assertIn("has no artifact 'nope'", r.stderr)


class ConfigTest(ClientCase):
    def test_flags_then_env_then_config_file(self):
        cfg = os.path.join(self.tmp, "cfg", "kiln")
        os.makedirs(cfg)
        with open(os.path.join(cfg, "config"), "w") as f:
            f.write(f"# written by hand\nserver = http://{self.server.addr}\n"
                    f"token = {self.server.token}\n")
        # The config file alone.
        r = self.kiln("get", "agents", env={"KILN_ADDR": "", "KILN_TOKEN": ""})
        self.assertEqual(r.returncode, 0, r.stderr)
        # The environment wins over the file, a flag over both.
        r = self.kiln("get", "agents", env={"KILN_ADDR": "127.0.0.1:1"})
        self.assertEqual(r.returncode, 1)
        r = self.kiln("get", "agents", "--server", self.server.addr, env={"KILN_ADDR": "127.0.0.1:1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(cfg, "config"), "w") as f:
            f.write("server http://x\n")
        r = self.kiln("get", "agents", env={"KILN_ADDR": ""})
        self.assertEqual(r.returncode, 1)
        self.assertIn("config:1: expected 'key = value'", r.stderr)


if __name__ == "__main__":
    kilntest.main()
