"""`kiln sandbox serve` and `kiln sandbox run` handing commands to it: the same
results, isolation and teardown as a run in the client's own process, warm
sandboxes used when they fit, cancels and timeouts, a client or the server
killed mid-run, and nothing left behind when the server stops.

Each test starts its own server on its own state dir under the class's own
cgroup parent, so the "nothing left" comparisons only see what it owns.
"""
import json
import os
import signal
import subprocess
import time
import unittest

import kilntest
from kilntest import run
from test_sandbox import (SKIP, cgroup_mounts, live_slots, pids_with, remove_cgroup_parent,
                          tree, wait_gone)


@unittest.skipIf(SKIP, SKIP or "")
class ServeTest(kilntest.TempDirTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cg_parent = f"/kiln-serve-test-{os.getpid()}"

    @classmethod
    def tearDownClass(cls):
        remove_cgroup_parent(cls.cg_parent)

    def setUp(self):
        super().setUp()
        self.state = os.path.join(self.tmp, "state")
        self.before = self.cgroups()
        self.server = None
        self.addCleanup(self.stop_server)

    def cgroups(self):
        """The cgroup trees below this class's parent (other tests run beside us)."""
        return {m: tree(m + self.cg_parent) for m in cgroup_mounts()}

    def start_server(self, *opts, warm=1):
        self.server = subprocess.Popen(
            [kilntest.KILN, "sandbox", "serve", "--state-dir", self.state,
             "--cgroup-parent", self.cg_parent, "--warm", str(warm), *opts],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while True:
            r = self.status("--wait", "30s")
            if r.returncode == 0:
                return json.loads(r.stdout)
            if self.server.poll() is not None:
                self.fail("kiln sandbox serve exited: " + self.server.stderr.read())
            self.assertLess(time.monotonic(), deadline, r.stderr)
            time.sleep(0.05)

    def stop_server(self):
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            self.assertEqual(self.server.wait(timeout=60), 0)
        if self.server:
            self.server.stderr.close()

    def status(self, *opts):
        return run(["sandbox", "status", "--state-dir", self.state, "-o", "json", *opts])

    def sbx(self, cmd, *opts, timeout=120, **kw):
        """`kiln sandbox run OPTS -o json -- CMD` on the test's state dir."""
        r = run(["sandbox", "run", "--state-dir", self.state, "-o", "json", *opts, "--", *cmd],
                timeout=timeout, **kw)
        lines = r.stdout.splitlines()
        self.assertTrue(lines and lines[-1].startswith("{"),
                        f"no result: rc={r.returncode} stderr={r.stderr}")
        return r, json.loads(lines[-1]), "\n".join(lines[:-1]) + ("\n" if lines[:-1] else "")

    def running_client(self, marker):
        """A `kiln sandbox run` (no -o json) whose command has started `sleep MARKER`."""
        p = subprocess.Popen([kilntest.KILN, "sandbox", "run", "--state-dir", self.state, "--",
                              "sh", "-c", f"echo started; exec sleep {marker}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.assertEqual(p.stdout.readline(), "started\n")
        return p

    def assert_nothing_left(self):
        self.assertEqual(self.cgroups(), self.before)
        self.assertEqual(live_slots(self.state), 0)
        self.assertFalse(os.path.exists(os.path.join(self.state, "serve.sock")))

    # ---- results -----------------------------------------------------------

    def test_served_run_matches_a_local_run(self):
        self.start_server()
        cmd = ["sh", "-c", "read x; echo out $x $FOO $(id -u) $(pwd); echo err >&2; exit 3"]
        opts = ["--env", "FOO=bar", "--user", "1000", "--cwd", "/tmp"]
        r, res, out = self.sbx(cmd, *opts, input="in\n")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertEqual(out, "out in bar 1000 /tmp\n")
        self.assertEqual(r.stderr, "err\n")
        self.assertTrue(res["served"])
        self.assertTrue(res["warm"])
        local, lres, lout = self.sbx(cmd, *opts, "--local", input="in\n")
        self.assertFalse(lres["served"])
        self.assertEqual((local.returncode, lout, local.stderr), (r.returncode, out, r.stderr))
        for k in ("exit_code", "signal", "status", "oom_killed", "timed_out", "cancelled",
                  "cgroup", "rootless", "idmap"):
            self.assertEqual(res[k], lres[k], k)
        self.assertGreater(res["memory_peak_bytes"], 0)
        self.assertGreaterEqual(res["pids_peak"], 2)

    def test_isolated_like_a_local_run(self):
        # The command runs in the sandbox, not in the server's namespaces.
        self.start_server()
        r, res, out = self.sbx(["sh", "-c", "echo $$; hostname; ls /proc | grep -c '^[0-9]'; "
                                "test ! -e /etc/shadow || echo shadow"])
        self.assertEqual(r.returncode, 0, r.stderr)
        pid, host, nprocs = out.split()[:3]
        self.assertEqual(pid, "2")  # kiln-init is 1
        self.assertEqual(host, "sandbox")
        self.assertLessEqual(int(nprocs), 4)
        self.assertNotIn("shadow", out)
        r, _, _ = self.sbx(["python3", "-c", "import socket; "
                            "socket.create_connection(('1.1.1.1', 53), timeout=5)"],
                           "--timeout", "20s")
        self.assertEqual(r.returncode, 1)
        self.assertIn("unreachable", r.stderr)

    def test_warm_sandboxes_do_not_pass_on_the_pools_idle_priority(self):
        # The pool thread makes sandboxes under SCHED_IDLE; commands must
        # run under SCHED_OTHER (0) at nice 0 all the same.
        self.start_server()
        r, res, out = self.sbx(["python3", "-c",
                                "import os; print(os.sched_getscheduler(0), os.nice(0))"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(res["warm"])
        self.assertEqual(out, "0 0\n")

    def test_daemons_do_not_outlive_the_run(self):
        self.start_server()
        marker = "1234.5678"  # a sleep no one else runs
        r, res, _ = self.sbx(["sh", "-c", f"setsid sleep {marker} & sleep {marker} & echo ok"])
        self.assertEqual(r.returncode, 0, r.stderr)
        # The result came once nothing of the run was alive: no waiting here.
        self.assertEqual(pids_with(f"sleep\0{marker}"), [])

    def test_other_shapes_get_a_sandbox_of_their_own(self):
        self.start_server("--memory", "256Mi")
        _, res, _ = self.sbx(["true"], "--memory", "256Mi")
        self.assertTrue(res["warm"])
        r, res, _ = self.sbx(["sh", "-c", "cat /proc/self/cgroup >/dev/null"], "--memory", "64Mi")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(res["served"])
        self.assertFalse(res["warm"])
        # The pool follows the last shape.
        self.status("--wait", "30s")
        _, res, _ = self.sbx(["true"], "--memory", "64Mi")
        self.assertTrue(res["warm"])

    def test_limits_hold_in_served_runs(self):
        self.start_server("--memory", "64Mi", "--pids", "32")
        r, res, _ = self.sbx(["sh", "-c", "x=a; while true; do x=$x$x; done"],
                             "--memory", "64Mi", "--pids", "32", timeout=120)
        self.assertEqual(r.returncode, 137, r.stderr)
        self.assertTrue(res["oom_killed"])

    def test_options_that_need_the_clients_process_run_locally(self):
        self.start_server()
        for opt in ("--local", "--keep"):
            _, res, _ = self.sbx(["true"], opt)
            self.assertFalse(res["served"], opt)

    def test_workspace_and_binds_go_into_warm_sandboxes(self):
        self.start_server()
        ws = os.path.join(self.tmp, "ws")
        data = os.path.join(self.tmp, "data")
        os.makedirs(ws)
        os.makedirs(data)
        with open(os.path.join(data, "f"), "w") as f:
            f.write("hello\n")
        cmd = ["sh", "-c", "pwd; id -u; cat /opt/d/x/f; echo made > out-$1; "
               "echo no 2>/dev/null > /opt/d/x/g || echo read-only; "
               "ls -la / /opt /opt/d | grep -v ' proc$'", "sh"]
        opts = ["--workspace", "ws", "--bind", f"{data}:/opt/d/x:ro"]  # relative: the client's
        r, res, out = self.sbx(cmd + ["served"], *opts, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(res["served"] and res["warm"], res)
        local, lres, lout = self.sbx(cmd + ["served"], *opts, "--local", cwd=self.tmp)
        self.assertFalse(lres["served"])
        # The same mounts, mount points and ownership as a run that made
        # its sandbox with them.
        self.assertEqual(out, lout)
        self.assertTrue(out.startswith("/workspace\n0\nhello\nread-only\n"), out)
        st = os.stat(os.path.join(ws, "out-served"))
        self.assertEqual((st.st_uid, st.st_gid), (0, 0))
        # What cannot be bound is reported as a local run reports it.
        r = run(["sandbox", "run", "--state-dir", self.state, "--workspace",
                 os.path.join(self.tmp, "missing"), "--", "true"])
        self.assertEqual(r.returncode, 125)
        self.assertIn("workspace source", r.stderr)
        self.assertIn("No such file or directory", r.stderr)
        # The full kiln's own hand-off (JSON) carries them too. (The
        # workspace holds one file again, as in the runs above: on tmpfs a
        # directory's size in `ls -la` counts its entries.)
        os.remove(os.path.join(ws, "out-served"))
        self.status("--wait", "30s")
        r = run(["sandbox", "run", "--state-dir", self.state, "-o", "json", *opts, "--",
                 *cmd, "core"], cwd=self.tmp, binary=kilntest.KILN_CORE)
        res = json.loads(r.stdout.splitlines()[-1])
        self.assertTrue(res["served"] and res["warm"], r.stderr)
        self.assertEqual("\n".join(r.stdout.splitlines()[:-1]) + "\n", lout)
        self.assertTrue(os.path.exists(os.path.join(ws, "out-core")))

    def test_errors_reach_the_client(self):
        self.start_server()
        r = run(["sandbox", "run", "--state-dir", self.state, "--", "no-such-cmd-kiln"])
        self.assertEqual(r.returncode, 127)
        self.assertIn("command not found", r.stderr)
        r = run(["sandbox", "run", "--state-dir", self.state, "--rootfs", "/nonexistent-kiln",
                 "--", "true"])
        self.assertEqual(r.returncode, 125)
        self.assertIn("rootfs '/nonexistent-kiln'", r.stderr)

    # ---- cancel, timeout, clients and servers going away ------------------

    def test_timeout_kills_the_sandbox(self):
        self.start_server()
        r, res, _ = self.sbx(["sh", "-c", "sleep 3456.5 & sleep 3456.5"], "--timeout", "1s")
        self.assertEqual(r.returncode, 124)
        self.assertTrue(res["timed_out"])
        self.assertTrue(wait_gone("3456.5"))

    def test_signal_to_the_client_cancels(self):
        self.start_server()
        p = self.running_client("4567.5")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 143, err)
        self.assertIn("interrupted by SIGTERM", err)
        self.assertTrue(wait_gone("4567.5"))

    def test_client_killed_mid_run_kills_the_sandbox(self):
        self.start_server()
        p = self.running_client("5678.5")
        p.kill()
        p.communicate(timeout=30)
        self.assertTrue(wait_gone("5678.5"))
        # The server goes on serving.
        r, res, _ = self.sbx(["true"])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_server_stop_cancels_runs_and_leaves_nothing(self):
        self.start_server(warm=2)
        p = self.running_client("6789.5")
        self.server.send_signal(signal.SIGTERM)
        self.assertEqual(self.server.wait(timeout=60), 0)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 143, err)
        self.assertTrue(wait_gone("6789.5"))
        self.assert_nothing_left()
        self.assertEqual(pids_with(self.state), [])

    def test_hundred_served_runs_leave_nothing(self):
        self.start_server(warm=2)
        with open("/proc/self/mountinfo") as f:
            mounts = f.read()
        for i in range(100):
            r = run(["sandbox", "run", "--state-dir", self.state, "--", "true"])
            self.assertEqual(r.returncode, 0, r.stderr)
        st = json.loads(self.status("--wait", "60s").stdout)
        self.assertEqual((st["teardowns"], st["running"]), (0, 0))
        self.stop_server()
        with open("/proc/self/mountinfo") as f:
            self.assertEqual(f.read(), mounts)
        self.assert_nothing_left()

    # ---- the server's own errors --------------------------------------------

    def test_one_server_per_state_dir_and_status_without_one(self):
        r = self.status()
        self.assertEqual(r.returncode, 1)
        self.assertIn("no kiln sandbox serve runs", r.stderr)
        st = self.start_server(warm=1)
        self.assertEqual((st["warm_ready"], st["warm_want"]), (1, 1))
        r = run(["sandbox", "serve", "--state-dir", self.state], timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("another kiln sandbox serve uses the state dir", r.stderr)
        # The first one still serves.
        _, res, _ = self.sbx(["true"])
        self.assertTrue(res["served"])

    def test_usage_errors(self):
        for opts, msg in ((["--warm", "65"], "--warm '65'"),
                          (["--memory", "lots"], "--memory 'lots'"),
                          (["--rootfs", "rel/dir"], "--rootfs 'rel/dir'"),
                          (["extra"], "unexpected argument 'extra'")):
            r = run(["sandbox", "serve", "--state-dir", self.state, *opts])
            self.assertEqual(r.returncode, 2, opts)
            self.assertIn(msg, r.stderr)
        r = run(["sandbox", "status", "--wait", "soon"])
        self.assertEqual(r.returncode, 2)

    def test_bad_requests_get_an_answer_not_a_hang(self):
        import socket
        import struct
        self.start_server()
        path = os.path.join(self.state, "serve.sock")
        for body in (b"not json", b"{}", b'{"v":1,"argv":[]}', b'{"v":2,"argv":["true"]}',
                     b'{"v":1,"argv":["true"],"cwd":"rel"}',
                     b'{"v":1,"argv":["true"],"stdio":7}'):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(path)
            s.sendall(struct.pack("=I", len(body)) + body)
            n = struct.unpack("=I", s.recv(4, socket.MSG_WAITALL))[0]
            res = json.loads(s.recv(n, socket.MSG_WAITALL))
            s.close()
            self.assertTrue(res["setup_failed"], body)
            self.assertIn("bad request", res["error"], body)
        # A frame longer than the limit: the connection is closed.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        s.sendall(struct.pack("=I", 1 << 30))
        self.assertEqual(s.recv(4), b"")
        s.close()
        _, res, _ = self.sbx(["true"])
        self.assertTrue(res["served"])


    # ---- the front: `kiln` handing the whole command line over ------------

    def argv_frame(self, args, env=(), stdio=0, cwd="/"):
        body = b"kiln-argv 1\0" + b"%d\0" % stdio + cwd.encode() + b"\0"
        body += b"%d\0" % len(args) + b"".join(a.encode() + b"\0" for a in args)
        body += b"%d\0" % len(env) + b"".join(e.encode() + b"\0" for e in env)
        return body

    def ask(self, body, fds=()):
        """Sends one frame to the server; its answer (b"" when it closes)."""
        import socket
        import struct
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(os.path.join(self.state, "serve.sock"))
        socket.send_fds(s, [struct.pack("=I", len(body)) + body], list(fds))
        head = s.recv(4, socket.MSG_WAITALL)
        answer = s.recv(struct.unpack("=I", head)[0], socket.MSG_WAITALL) if head else b""
        s.close()
        return answer

    @unittest.skipIf(kilntest.KILN_CORE == kilntest.KILN, "no front built (no musl-gcc)")
    def test_the_front_and_the_full_kiln_give_the_same_served_run(self):
        self.start_server()
        cmd = ["sh", "-c", "read x; echo out $x $FOO $(id -u); echo err >&2; exit 5"]
        opts = ["--env", "FOO", "--user", "1000"]
        env = {"FOO": "from-the-client"}
        # The front serves it without the full kiln (which it cannot find).
        r, res, out = self.sbx(cmd, *opts, input="in\n",
                               env=dict(env, KILN_CORE="/nonexistent-kiln-core"))
        self.status("--wait", "30s")
        core = run(["sandbox", "run", "--state-dir", self.state, "-o", "json", *opts, "--", *cmd],
                   input="in\n", env=env, binary=kilntest.KILN_CORE)
        cres = json.loads(core.stdout.splitlines()[-1])
        self.assertEqual(out, "out in from-the-client 1000\n")
        self.assertEqual((r.returncode, r.stderr), (5, "err\n"))
        self.assertEqual((core.returncode, core.stdout.splitlines()[0], core.stderr),
                         (r.returncode, out.strip(), r.stderr))
        self.assertTrue(res["served"] and res["warm"] and cres["served"] and cres["warm"])
        # A global option first: the full kiln runs and hands it over itself.
        r = run(["--log-level", "error", "sandbox", "run", "--state-dir", self.state,
                 "-o", "json", "--", "true"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(json.loads(r.stdout)["served"])

    def test_what_the_server_does_not_take_the_full_kiln_runs(self):
        self.start_server()
        # --help and usage errors: printed once, by the full kiln.
        r = run(["sandbox", "run", "--state-dir", self.state, "--help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: kiln sandbox run", r.stdout)
        r = run(["sandbox", "run", "--state-dir", self.state, "--no-such-option", "--", "true"])
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.count("unknown option '--no-such-option'"), 1, r.stderr)
        r = run(["sandbox", "run", "--state-dir", self.state, "--env", "UNSET_KILN_VAR", "--",
                 "true"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("not set in kiln's environment", r.stderr)
        # The front guesses the socket from the first --state-dir; the
        # parser takes the last: the server sees another state dir, says
        # "local", and the full kiln runs it there.
        other = os.path.join(self.tmp, "other")
        r = run(["sandbox", "run", "--state-dir", self.state, "--state-dir", other, "-o", "json",
                 "--", "true"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(json.loads(r.stdout)["served"])
        self.assertEqual(live_slots(other), 0)
        # A relative --rootfs is the client's: the server gets it absolute.
        r = run(["sandbox", "run", "--state-dir", self.state, "--rootfs", "no-such-rootfs-kiln",
                 "--", "true"], cwd=self.tmp)
        self.assertEqual(r.returncode, 125)
        self.assertIn(f"rootfs '{self.tmp}/no-such-rootfs-kiln'", r.stderr)

    @unittest.skipIf(kilntest.KILN_CORE == kilntest.KILN, "no front built (no musl-gcc)")
    def test_the_front_without_the_full_kiln_says_so(self):
        r = run(["version"], env={"KILN_CORE": "/nonexistent-kiln-core"})
        self.assertEqual(r.returncode, 125)
        self.assertIn("cannot run the full kiln ($KILN_CORE)", r.stderr)

    @unittest.skipIf(kilntest.KILN_CORE == kilntest.KILN, "no front built (no musl-gcc)")
    def test_the_front_facing_a_server_it_does_not_understand(self):
        # A stand-in server: one answers like a server of the JSON protocol
        # only, one closes without a word. The front says which, exits 125.
        import socket
        import struct
        import threading
        os.makedirs(self.state)
        path = os.path.join(self.state, "serve.sock")
        for answer, msg in ((b'{"setup_failed":true,"error":"bad request"}',
                             "an answer this kiln does not know"),
                            (b"exit x", "an answer this kiln does not know"),
                            (None, "closed the connection without a result")):
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ls.bind(path)
            ls.listen(1)

            def serve():
                c, _ = ls.accept()
                n = struct.unpack("=I", c.recv(4, socket.MSG_WAITALL))[0]
                c.recv(n, socket.MSG_WAITALL)
                if answer is not None:
                    c.sendall(struct.pack("=I", len(answer)) + answer)
                c.close()
            t = threading.Thread(target=serve)
            t.start()
            r = run(["sandbox", "run", "--state-dir", self.state, "--", "true"])
            t.join(timeout=30)
            ls.close()
            os.unlink(path)
            self.assertEqual(r.returncode, 125, r.stderr)
            self.assertIn(msg, r.stderr)

    def test_argv_requests(self):
        self.start_server()
        rd, wr = os.pipe()
        try:
            args = ["run", "--state-dir", self.state, "--", "sh", "-c", "echo hi; exit 7"]
            self.assertEqual(self.ask(self.argv_frame(args, stdio=2), [wr]), b"exit 7")
            os.close(wr)
            wr = -1
            self.assertEqual(os.read(rd, 100), b"hi\n")
            self.assertEqual(os.read(rd, 100), b"")  # no copy of the client's stdout is left
        finally:
            os.close(rd)
            if wr >= 0:
                os.close(wr)
        # Options the server does not take, and another state dir: "local".
        ws = os.path.join(self.tmp, "ws")
        os.makedirs(ws)
        for args in (["run", "--state-dir", self.state, "--keep", "--", "true"],
                     ["run", "--state-dir", self.state, "--local", "--", "true"],
                     ["run", "--state-dir", self.tmp, "--", "true"],
                     ["run", "--state-dir", self.state, "--bogus"],
                     ["run", "--state-dir", self.state, "--help"],
                     ["run", "--", "true"]):
            self.assertEqual(self.ask(self.argv_frame(args)), b"local", args)
        # Malformed: the connection is closed, never hung.
        for body in (b"kiln-argv 1\0", self.argv_frame(["run"], stdio=8),
                     self.argv_frame(["run", "--", "true"], cwd="rel"),
                     self.argv_frame(["run", "--state-dir", self.state, "--", "true"], stdio=1),
                     self.argv_frame(["run"])[:-1] + b"x",
                     b"kiln-argv 1\0" b"0\0/\0" b"99999999\0"):
            self.assertEqual(self.ask(body), b"", body)
        _, res, _ = self.sbx(["true"])
        self.assertTrue(res["served"])


if __name__ == "__main__":
    kilntest.main()
