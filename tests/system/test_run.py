"""kiln run and kiln up: a command or a spec run embedded (no server
configured: an in-process server and agent, the workspace seeded with the
current directory, artifacts downloaded), exit codes, Ctrl-C; and kiln up (a
server and an agent in one process) writing the client config so that kiln
commands find it with no flags, and putting the old config back."""
import json
import os
import shutil
import signal
import subprocess
import time

import kilntest
from kilnagent import skip_reason
from kilnapi import Client, admin_token, wait_for


class RunCase(kilntest.TempDirTestCase):
    def setUp(self):
        reason = skip_reason()
        if reason:
            self.skipTest(reason)
        super().setUp()
        # No server configured: an empty config dir, no KILN_ADDR.
        self.env = {"XDG_CONFIG_HOME": os.path.join(self.tmp, "config"),
                    "KILN_INIT": kilntest.KILN_INIT, "TMPDIR": self.tmp}

    def kiln(self, *args, cwd=None, timeout=120, env=None):
        e = dict(self.env)
        e.update(env or {})
        return kilntest.run(list(args), env=e, cwd=cwd or self.tmp, timeout=timeout)

    def assert_no_leftovers(self):
        # The embedded run's temporary state directory is gone.
        self.assertEqual([d for d in os.listdir(self.tmp) if d.startswith("kiln-run-")], [])


class EmbeddedRunTest(RunCase):
    def test_command_output_and_exit_codes(self):
        r = self.kiln("run", "--", "printf", "%s|%s\\n", "it's", "a b")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("it's|a b\n", r.stdout)
        self.assertTrue(r.stdout.startswith('##[kiln] step 1/1 "run"\n'), r.stdout)
        self.assertIn("job 1 succeeded", r.stderr)
        r = self.kiln("run", "--", "sh", "-c", "exit 3")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("failed (exit code 3)", r.stderr)
        r = self.kiln("run", "--", "no-such-command")
        self.assertEqual(r.returncode, 127, r.stderr)
        self.assert_no_leftovers()

    def test_job_options(self):
        r = self.kiln("run", "--env", "GREETING=hello there", "--name", "greet", "--pids", "64",
                      "--", "sh", "-c", 'echo "$GREETING from $KILN_JOB_NAME"')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("hello there from greet\n", r.stdout)

    def test_timeout_and_invalid_spec_and_unknown_image(self):
        t0 = time.monotonic()
        r = self.kiln("run", "--timeout", "1s", "--", "sleep", "60")
        self.assertEqual(r.returncode, 124, r.stderr)
        self.assertLess(time.monotonic() - t0, 40)
        r = self.kiln("run", "--timeout", "ten", "--", "true")
        self.assertEqual(r.returncode, 2)
        self.assertIn("timeout", r.stderr)
        r = self.kiln("run", "--image", "nope:1", "--", "true")
        self.assertEqual(r.returncode, 125, r.stderr)
        self.assertIn("image 'nope:1' is not available", r.stderr)
        self.assert_no_leftovers()

    def test_usage_errors(self):
        self.assertEqual(self.kiln("run").returncode, 2)
        self.assertEqual(self.kiln("run", "-f", "x.yaml", "--", "true").returncode, 2)
        r = self.kiln("run", "-f", "x.yaml", "--cpus", "2")
        self.assertEqual(r.returncode, 2)
        self.assertIn("go with a command", r.stderr)
        r = self.kiln("run", "-f", os.path.join(self.tmp, "missing.yaml"))
        self.assertEqual(r.returncode, 1)

    def test_ctrl_c_cancels(self):
        e = dict(os.environ)
        e.update(self.env)
        e.pop("KILN_ADDR", None)
        p = subprocess.Popen([kilntest.KILN, "run", "--", "sh", "-c", "echo started; sleep 300"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=self.tmp)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        line = p.stdout.readline()
        while line and b"started" not in line:
            line = p.stdout.readline()
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 130, err)
        self.assertLess(time.monotonic() - t0, 30)
        self.assertIn(b"cancelling job 1", err)
        self.assertIn(b"cancelled", err)
        self.assert_no_leftovers()

    def test_readme_main_command(self):
        """`kiln run -f examples/ci.yaml` from the source tree: builds and
        tests examples/hello-c and saves its test report."""
        if not os.path.isfile(os.path.join(kilntest.SRC, "examples", "ci.yaml")):
            self.skipTest("no source tree")
        arts = os.path.join(self.tmp, "arts")
        r = self.kiln("run", "-f", "examples/ci.yaml", "--artifacts-dir", arts,
                      cwd=kilntest.SRC, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr)
        self.assertIn("4 tests, 0 failed", r.stdout)
        with open(os.path.join(arts, "examples", "hello-c", "test-report.xml")) as f:
            self.assertIn("<testsuite", f.read())

    def test_workspace_is_seeded_without_ignored_files(self):
        if not shutil.which("git"):
            self.skipTest("git is not installed")
        repo = os.path.join(self.tmp, "repo")
        os.makedirs(os.path.join(repo, "big"))
        for name, text in (("tracked.txt", "t\n"), (".gitignore", "big/\n*.o\n"),
                           ("untracked.txt", "u\n"), ("big/blob", "b\n"), ("x.o", "o\n")):
            with open(os.path.join(repo, name), "w") as f:
                f.write(text)
        subprocess.run(["git", "init", "-q", repo], check=True)
        subprocess.run(["git", "-C", repo, "add", "tracked.txt", ".gitignore"], check=True)
        r = self.kiln("run", "--artifact", "out.txt", "--", "sh", "-c",
                      "find . -type f ! -path './.git/*' | sort > /tmp/l; cat /tmp/l; cp /tmp/l out.txt",
                      cwd=repo)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("./.gitignore\n./tracked.txt\n./untracked.txt\n", r.stdout)
        self.assertNotIn("big/blob", r.stdout)
        self.assertNotIn("x.o", r.stdout)
        with open(os.path.join(repo, "kiln-artifacts", "out.txt")) as f:
            self.assertIn("./tracked.txt", f.read())
        # Outside a git work tree the whole directory is copied.
        plain = os.path.join(self.tmp, "plain")
        os.makedirs(os.path.join(plain, "sub"))
        with open(os.path.join(plain, "sub", "f"), "w") as f:
            f.write("x")
        r = self.kiln("run", "--", "cat", "sub/f", cwd=plain)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("x", r.stdout)


class SeedFailureTest(RunCase):
    def test_a_workspace_too_big_to_copy_fails_the_job(self):
        big = os.path.join(self.tmp, "big")
        os.makedirs(big)
        with open(os.path.join(big, "sparse"), "wb") as f:
            f.truncate(5 << 30)  # 5 GiB, sparse: over the 4 GiB seed limit
        t0 = time.monotonic()
        r = self.kiln("run", "--workdir", big, "--", "true")
        self.assertEqual(r.returncode, 125, r.stderr)
        self.assertIn("too big to copy", r.stdout + r.stderr)
        self.assertLess(time.monotonic() - t0, 60)
        self.assert_no_leftovers()


class UpTest(RunCase):
    def start_up(self, *args):
        state = os.path.join(self.tmp, "state")
        addr_file = os.path.join(self.tmp, "up.addr")
        e = dict(os.environ)
        e.update(self.env)
        e.pop("KILN_ADDR", None)
        log = open(os.path.join(self.tmp, "up.log"), "wb")
        self.addCleanup(log.close)
        p = subprocess.Popen([kilntest.KILN, "up", "--state-dir", state, "--listen",
                              "127.0.0.1:0", "--addr-file", addr_file,
                              "--cgroup-parent", f"/kiln-systest-up-{os.getpid()}"] + list(args),
                             stdout=log, stderr=log, env=e)
        self.addCleanup(self.stop, p)
        # Ready once it says so: the address file is written a moment before
        # the "kiln is up" banner (waiting on the file alone raced the banner).
        wait_for(lambda: "kiln is up" in self.read_log() or p.poll() is not None, timeout=60,
                 what="kiln up")
        self.assertIsNone(p.poll(), self.read_log())
        self.assertTrue(os.path.exists(addr_file), self.read_log())
        self.token = admin_token(state)
        with open(addr_file) as f:
            return p, f.read().strip()

    def read_log(self):
        with open(os.path.join(self.tmp, "up.log"), errors="replace") as f:
            return f.read()

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for root in ("/sys/fs/cgroup", *[os.path.join("/sys/fs/cgroup", d)
                                         for d in os.listdir("/sys/fs/cgroup")]):
            d = os.path.join(root, f"kiln-systest-up-{os.getpid()}")
            if os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    def test_up_serves_and_writes_the_client_config(self):
        cfg_dir = os.path.join(self.tmp, "config", "kiln")
        os.makedirs(cfg_dir)
        cfg = os.path.join(cfg_dir, "config")
        with open(cfg, "w") as f:
            f.write("# mine\nserver = http://192.0.2.1:9\ntoken = kiln_pat_x\n")
        p, addr = self.start_up()
        with open(cfg) as f:
            text = f.read()
        self.assertIn(f"server = http://{addr}\n", text)
        self.assertIn("# mine\n", text)
        # The server's admin token replaces the old one (the file is 0600).
        self.assertIn(f"token = {self.token}\n", text)
        self.assertNotIn("token = kiln_pat_x\n", text)
        self.assertEqual(os.stat(cfg).st_mode & 0o777, 0o600)
        self.assertNotIn(self.token, self.read_log())
        self.assertNotIn("192.0.2.1", text)
        self.assertIn("kiln is up", self.read_log())
        # kiln commands on this machine use it with no flags.
        r = self.kiln("run", "--", "echo", "hello via up")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("hello via up\n", r.stdout)
        self.assertIn("kiln logs 1", r.stderr)
        api = Client(addr, token=self.token)
        self.addCleanup(api.close)
        job = api.ok("GET", "/v1/jobs/1")
        self.assertEqual(job["state"], "succeeded")
        self.assertEqual(job["attempts"][0]["agent"] is not None, True)
        r = self.kiln("get", "jobs")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("succeeded", r.stdout)
        # SIGTERM: drained, stopped, the old config back.
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, self.read_log())
        with open(cfg) as f:
            self.assertEqual(f.read(), "# mine\nserver = http://192.0.2.1:9\ntoken = kiln_pat_x\n")

    def test_up_without_a_previous_config_removes_its_own(self):
        p, addr = self.start_up("--slots", "1", "--labels", "mine")
        cfg = os.path.join(self.tmp, "config", "kiln", "config")
        self.assertTrue(os.path.exists(cfg))
        api = Client(addr, token=self.token)
        self.addCleanup(api.close)
        agents = api.ok("GET", "/v1/agents")["agents"]
        self.assertEqual(len(agents), 1)
        self.assertIn("mine", agents[0]["labels"])
        self.assertEqual(agents[0]["capacity"]["slots"], 1)
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, self.read_log())
        self.assertFalse(os.path.exists(cfg))

    def test_second_up_on_the_same_state_dir_fails(self):
        p, addr = self.start_up()
        r = self.kiln("up", "--state-dir", os.path.join(self.tmp, "state"), "--listen",
                      "127.0.0.1:0", "--no-config", timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("in use", r.stderr)


if __name__ == "__main__":
    kilntest.main()
