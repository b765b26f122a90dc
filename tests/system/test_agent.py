"""kiln agent against a real kiln server: registration with detected labels
and capacity; jobs run in sandboxes with their steps in order, exit codes,
continue-on-error, timeouts, environment and log markers; byte-exact logs;
artifacts (globs, directories; symlinks out of the workspace refused);
images mapped to root filesystems; cancel; drain on SIGTERM; and restart
after a crash (leftovers removed, lost jobs queued again)."""
import hashlib
import os
import shutil
import signal
import time

import kilntest
from kilnagent import JobCase, cgroup_pids, job, markers
from kilnapi import wait_for

# A cancelled job's processes must be gone within 1 s of the cancel; this
# bound is what the test asserts, with room for a loaded 2-core machine
# (the heartbeat long-poll delivers the cancel in one round trip).
CANCEL_BOUND = 1.0


class RegistrationTest(JobCase):
    def test_labels_and_capacity(self):
        a = self.start_agent(args=["--labels", "fast,team:ml", "--slots", "3"])
        info = a.info
        for label in ("linux", "sandbox", "executor:sandbox", "fast", "team:ml"):
            self.assertIn(label, info["labels"])
        self.assertTrue(any(l.startswith("cgroup-") for l in info["labels"]), info["labels"])
        self.assertIn("arch:" + os.uname().machine, info["labels"])
        self.assertEqual(info["capacity"]["slots"], 3)
        self.assertGreater(info["capacity"]["cpus"], 0)
        self.assertGreater(info["capacity"]["memory"], 0)
        self.assertIn("no GPUs reported", a.read_log())

    def test_bad_options(self):
        r = kilntest.run(["agent", "--server", self.server.addr, "--slots", "0"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("--slots", r.stderr)
        r = kilntest.run(["agent"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("--server", r.stderr)
        r = kilntest.run(["agent", "--server", self.server.addr, "--state-dir",
                          os.path.join(self.tmp, "x"), "--image", "deb=/nonexistent"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent", r.stderr)
        r = kilntest.run(["agent", "--server", self.server.addr, "--state-dir",
                          os.path.join(self.tmp, "y"), "--labels", "bad label"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("--labels", r.stderr)

    def test_one_agent_per_state_dir(self):
        a = self.start_agent()
        r = kilntest.run(["agent", "--server", self.server.addr, "--state-dir", a.state_dir],
                         timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("in use by another kiln agent", r.stderr)


class StepsTest(JobCase):
    def setUp(self):
        super().setUp()
        self.agent = self.start_agent()

    def test_steps_markers_and_exact_log(self):
        jid = self.submit(job("hello", [
            {"name": "one", "run": "echo out; echo err >&2; echo more"},
            {"name": "two", "run": "printf 'no newline'"},
            {"name": "three", "run": "printf 'a\\nb\\n'"},
        ]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        self.assertEqual(j["exit_code"], 0)
        log = self.log(jid)
        lines = log.split(b"\n")
        self.assertEqual(lines[0], b'##[kiln] step 1/3 "one"')
        self.assertEqual(lines[1:4], [b"out", b"err", b"more"])
        self.assertRegex(lines[4], rb'^##\[kiln\] step 1/3 "one" exited 0 after \d+\.\d{3}s$')
        self.assertEqual(lines[5], b'##[kiln] step 2/3 "two"')
        # The job's bytes exactly; kiln's newline before the next marker.
        self.assertEqual(lines[6], b"no newline")
        self.assertRegex(lines[7], rb'^##\[kiln\] step 2/3 "two" exited 0 after')
        self.assertEqual(lines[8], b'##[kiln] step 3/3 "three"')
        self.assertEqual(lines[9:11], [b"a", b"b"])
        self.assertRegex(lines[-2], rb"^##\[kiln\] job succeeded after \d+\.\d{3}s$")
        self.assertEqual(lines[-1], b"")
        att = j["attempts"][0]
        self.assertEqual(att["agent"], "a1")
        # The usage comes with the result.
        u = att["usage"]
        self.assertTrue(u["reported"], u)
        self.assertEqual(u["executor"], "sandbox")
        self.assertGreater(u["memory_peak_bytes"], 0)
        self.assertGreater(u["wall_ms"] + u["cpu_user_ms"] + u["cpu_system_ms"], 0)

    def test_binary_output_is_kept_byte_for_byte(self):
        # 300 KiB of random bytes, written both to the log and to an artifact.
        jid = self.submit(job("binary", [
            {"name": "blob", "run": "head -c 307200 /dev/urandom > blob.bin; cat blob.bin; echo"}],
            artifacts=["blob.bin"]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        status, blob = self.artifact(jid, "blob.bin")
        self.assertEqual(status, 200)
        self.assertEqual(len(blob), 307200)
        log = self.log(jid)
        header = b'##[kiln] step 1/1 "blob"\n'
        self.assertTrue(log.startswith(header + blob + b"\n##[kiln] step 1/1"), log[:200])

    def test_environment(self):
        jid = self.submit(job("env", [
            {"name": "show", "run": "echo CI=$CI JOB=$KILN_JOB_ID STEP=$KILN_STEP IDX=$KILN_STEP_INDEX "
                                    "A=$A B=$B PWD=$PWD WS=$KILN_WORKSPACE",
             "env": {"B": "step"}}], env={"A": "job", "B": "job"}))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        self.assertIn(f"CI=true JOB={jid} STEP=show IDX=1 A=job B=step PWD=/workspace "
                      f"WS=/workspace".encode(), self.log(jid))

    def test_failing_step_fails_the_job_with_its_exit_code(self):
        jid = self.submit(job("fail", [
            {"name": "ok", "run": "true"},
            {"name": "allowed", "run": "exit 3", "continue-on-error": True},
            {"name": "bad", "run": "echo failing; exit 7"},
            {"name": "never", "run": "echo NEVER"}]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "failed")
        self.assertEqual(j["exit_code"], 7)
        self.assertIn('step 3 "bad" failed with exit status 7', j["message"])
        log = self.log(jid)
        self.assertNotIn(b"NEVER", log)
        m = markers(log)
        self.assertTrue(any(x.startswith('step 2/4 "allowed" exited 3') and
                            x.endswith("(continue-on-error)") for x in m), m)
        self.assertTrue(m[-1].startswith("job failed after"), m)

    def test_shell_python_and_working_directory(self):
        jid = self.submit(job("shells", [
            {"run": "mkdir -p sub/dir"},
            {"run": "import os; print('py', os.getcwd())", "shell": "python"},
            {"run": "pwd", "working-directory": "sub/dir", "shell": "sh"}]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        log = self.log(jid)
        self.assertIn(b"py /workspace\n", log)
        self.assertIn(b"/workspace/sub/dir\n", log)

    def test_command_not_found(self):
        jid = self.submit(job("missing", [{"run": "true", "shell": "no-such-shell {0}"}]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "failed")
        self.assertEqual(j["exit_code"], 127)
        self.assertIn("could not start", j["message"])

    def test_step_timeout(self):
        jid = self.submit(job("slow-step", [{"run": "sleep 30", "timeout": "1s"}]))
        j = self.wait_job(jid, timeout=60)
        self.assertEqual(j["state"], "failed")
        self.assertIn("timed out", j["message"])
        self.assertTrue(any("timed out" in m for m in markers(self.log(jid))))

    def test_job_timeout(self):
        t0 = time.monotonic()
        jid = self.submit(job("slow", ["echo started; sleep 60"], timeout="2s"))
        j = self.wait_job(jid, timeout=60)
        self.assertEqual(j["state"], "timed_out", j)
        self.assertLess(time.monotonic() - t0, 30)
        self.assertIn("timeout of 2s", j["message"])
        log = self.log(jid)
        self.assertIn(b"started\n", log)
        self.assertTrue(markers(log)[-1].startswith("job timed_out after"), markers(log))

    def test_unsupported_network_and_unknown_image_fail_clearly(self):
        jid = self.submit(job("net", ["true"], network="egress"))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "failed")
        self.assertIn("egress", j["message"])
        self.assertIsNone(j["exit_code"])
        jid = self.submit(job("img", ["true"], image="debian:12"))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "failed")
        self.assertIn("image 'debian:12' is not available", j["message"])

    def test_limits_apply(self):
        jid = self.submit(job("limited", ["echo ready; sleep 60"],
                              resources={"pids": 50, "memory": "64Mi", "cpus": 0.5}))
        wait_for(lambda: b"ready" in self.log(jid), timeout=60, what="the job to start")
        (entry,) = self.agent.sandbox_entries()
        limits = {}
        for cg in self.agent.sandbox_cgroups(entry):
            for name in ("pids.max", "memory.limit_in_bytes", "memory.max", "cpu.cfs_quota_us",
                         "cpu.max"):
                p = os.path.join(cg, name)
                if os.path.exists(p):
                    with open(p) as f:
                        limits[name] = f.read().strip()
        self.api.ok("POST", f"/v1/jobs/{jid}/cancel")
        self.assertEqual(limits.get("pids.max"), "50", limits)
        self.assertEqual(limits.get("memory.limit_in_bytes", limits.get("memory.max")),
                         str(64 << 20), limits)
        self.assertIn(limits.get("cpu.cfs_quota_us", limits.get("cpu.max", "").split(" ")[0]),
                      ("50000",), limits)


class ArtifactsTest(JobCase):
    def setUp(self):
        super().setUp()
        self.agent = self.start_agent()

    def test_globs_directories_and_symlinks(self):
        jid = self.submit(job("arts", [
            "mkdir -p dist/sub logs && echo a > dist/a.tgz && echo b > dist/sub/b.tgz && "
            "echo c > dist/c.txt && echo l1 > logs/one.log && echo l2 > logs/two.log && "
            "ln -s /etc/shadow dist/evil.tgz && ln -s /etc logs/etc && mkfifo dist/fifo.tgz && "
            "echo report > report.xml"],
            artifacts=["dist/*.tgz", "dist/**/*.tgz", "logs", "report.xml", "missing.txt"]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        arts = {a["path"]: a for a in self.api.ok("GET", f"/v1/jobs/{jid}/artifacts")["artifacts"]}
        self.assertEqual(sorted(arts), ["dist/a.tgz", "dist/sub/b.tgz", "logs/one.log",
                                        "logs/two.log", "report.xml"])
        self.assertEqual(self.artifact(jid, "report.xml"), (200, b"report\n"))
        self.assertEqual(arts["dist/a.tgz"]["sha256"], hashlib.sha256(b"a\n").hexdigest())
        m = markers(self.log(jid))
        self.assertIn("artifact 'dist/evil.tgz' skipped: it is (or goes through) a symlink", m)
        self.assertIn("artifact 'dist/fifo.tgz' skipped: not a regular file", m)
        self.assertIn("artifact 'missing.txt' not found", m)
        self.assertIn("artifact 'logs/etc' skipped: it is (or goes through) a symlink", m)
        self.assertIn("artifacts: 5 of 8 files kept (17 bytes)", m)

    def test_artifacts_of_a_failed_job_are_kept(self):
        jid = self.submit(job("failed-arts", ["echo partial > out.txt; exit 1"],
                              artifacts=["out.txt"]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "failed")
        self.assertEqual(self.artifact(jid, "out.txt"), (200, b"partial\n"))

    def test_symlinked_directory_is_not_followed(self):
        jid = self.submit(job("dirlink", ["ln -s /etc out"], artifacts=["out/passwd", "out"]))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jid}/artifacts")["artifacts"], [])


class ImageTest(JobCase):
    def test_image_names_map_to_root_filesystems(self):
        root = os.path.join(self.tmp, "rootfs")
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
        for tool in ("sh", "cat", "echo", "ls"):
            os.symlink("busybox", os.path.join(root, "bin", tool))
        with open(os.path.join(root, "marker"), "w") as f:
            f.write("in the image\n")
        self.start_agent(args=["--image", f"tiny:1={root}"])
        self.assertIn("image:tiny:1", self.agents[0].info["labels"])
        jid = self.submit(job("imaged", [{"run": "cat /marker; ls /usr 2>&1 || true",
                                           "shell": "sh"}],
                              image="tiny:1", **{"runs-on": ["image:tiny:1"]}))
        j = self.wait_job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        log = self.log(jid)
        self.assertIn(b"in the image\n", log)


class CancelTest(JobCase):
    def test_cancel_kills_the_sandbox_within_a_second(self):
        a = self.start_agent()
        jid = self.submit(job("long", ["echo started; sleep 300 & sleep 300"]))
        wait_for(lambda: b"started" in self.log(jid), timeout=60, what="the job's output")
        entries = a.sandbox_entries()
        self.assertEqual(len(entries), 1, entries)
        cgroups = a.sandbox_cgroups(entries[0])
        self.assertTrue(cgroups)
        self.assertTrue(any(cgroup_pids(c) for c in cgroups))
        t0 = time.monotonic()
        self.api.ok("POST", f"/v1/jobs/{jid}/cancel")
        wait_for(lambda: not any(cgroup_pids(c) for c in cgroups), timeout=10, interval=0.01,
                 what="the job's cgroup to be empty")
        took = time.monotonic() - t0
        self.assertLess(took, CANCEL_BOUND, f"cgroup emptied {took:.3f}s after the cancel")
        self.assertEqual(self.job(jid)["state"], "cancelled")
        # What the cancelled attempt used is still reported.
        wait_for(lambda: self.job(jid)["attempts"][0]["usage"]["reported"], what="its usage")
        wait_for(lambda: not a.sandbox_entries(), what="the sandbox to be removed")
        wait_for(lambda: not any(os.path.exists(c) for c in cgroups), what="the cgroups removed")
        # The agent is free for the next job.
        jid2 = self.submit(job("next", ["echo next"]))
        self.assertEqual(self.wait_job(jid2)["state"], "succeeded")


class DrainTest(JobCase):
    def test_sigterm_lets_running_jobs_finish(self):
        a = self.start_agent()
        jid = self.submit(job("finishing", ["echo begin; sleep 2; echo end"]))
        wait_for(lambda: b"begin" in self.log(jid), timeout=60, what="the job to start")
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(60), 0, a.read_log()[-2000:])
        j = self.job(jid)
        self.assertEqual(j["state"], "succeeded", j)
        self.assertIn(b"end\n", self.log(jid))
        # No new job was taken during the drain.
        jid2 = self.submit(job("after"))
        time.sleep(0.5)
        self.assertEqual(self.job(jid2)["state"], "queued")

    def test_drain_deadline_hands_jobs_back(self):
        a = self.start_agent(args=["--drain-timeout", "1s"])
        jid = self.submit(job("too-long", ["echo attempt $KILN_ATTEMPT; sleep 300"], retries=1))
        wait_for(lambda: b"attempt 1" in self.log(jid), timeout=60, what="the job to start")
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(60), 0, a.read_log()[-2000:])
        self.assertFalse(a.sandbox_entries())
        j = self.job(jid)
        self.assertEqual(j["state"], "queued", j)
        self.assertIn("released by agent 'a1'", j["attempts"][0]["message"])
        self.assertIn(b"the agent is shutting down", self.log(jid, attempt=1))
        # Another agent runs it (attempt 2).
        self.start_agent("a2")
        wait_for(lambda: b"attempt 2" in self.log(jid, attempt=2), timeout=60,
                 what="the second attempt")
        self.api.ok("POST", f"/v1/jobs/{jid}/cancel")


class CrashTest(JobCase):
    def test_restart_after_kill9_cleans_up_and_requeues(self):
        a = self.start_agent()
        jid = self.submit(job("crashy", ["echo attempt $KILN_ATTEMPT; sleep 300"], retries=1))
        wait_for(lambda: b"attempt 1" in self.log(jid), timeout=60, what="the job to start")
        entries = a.sandbox_entries()
        cgroups = a.sandbox_cgroups(entries[0])
        self.assertTrue(any(cgroup_pids(c) for c in cgroups))
        a.kill9()
        # Its sandbox's cgroups are left behind (kiln-init may notice the
        # agent is gone and end the sandbox's processes by itself, or not).
        self.assertIn(entries[0], a.sandbox_entries())
        a.start(self.api)
        # At start: old sandboxes killed and removed, the lost lease released.
        self.assertFalse(any(cgroup_pids(c) for c in cgroups))
        self.assertEqual([c for c in cgroups if os.path.exists(c)], [], a.read_log())
        self.assertNotIn(entries[0], a.sandbox_entries())
        self.assertEqual(os.listdir(os.path.join(a.state_dir, "jobs")) and
                         [d for d in os.listdir(os.path.join(a.state_dir, "jobs"))
                          if d.startswith(f"{jid}.1")], [])
        wait_for(lambda: b"attempt 2" in self.log(jid, attempt=2), timeout=60,
                 what="the job to run again")
        j = self.job(jid)
        self.assertIn("released by agent 'a1': the agent restarted", j["attempts"][0]["message"])
        self.api.ok("POST", f"/v1/jobs/{jid}/cancel")


class WarmPoolTest(JobCase):
    warm = 1

    def pids_max(self, a, sid):
        for cg in a.sandbox_cgroups(sid):
            p = os.path.join(cg, "pids.max")
            if os.path.exists(p):
                with open(p) as f:
                    return f.read().strip()
        return None

    def test_jobs_take_warm_sandboxes_of_their_shape(self):
        a = self.start_agent()
        # A warm sandbox of the default shape is made at start.
        (warm1,) = wait_for(lambda: a.sandbox_entries() or None, what="a warm sandbox")
        jid = self.submit(job("first", ["echo one > /workspace/f; echo tmp > /tmp/t; "
                                        "echo hi"]))
        self.assertEqual(self.wait_job(jid)["state"], "succeeded")
        # It was used (gone with the job), and the next one is there.
        try:
            warm2 = wait_for(lambda: [e for e in a.sandbox_entries() if e != warm1],
                             timeout=60, what="the next warm sandbox")[0]
            wait_for(lambda: warm1 not in a.sandbox_entries(), timeout=60,
                     what="the used sandbox removed")
        except AssertionError as e:
            raise AssertionError(f"{e}; sandboxes {a.sandbox_entries()}; agent log:\n"
                                 f"{a.read_log()[-3000:]}") from None
        # A fresh sandbox: nothing of the first job is visible.
        jid = self.submit(job("second", ["ls /workspace; cat /tmp/t 2>&1 || true"]))
        self.assertEqual(self.wait_job(jid)["state"], "succeeded")
        log = self.log(jid)
        self.assertNotIn(b"\nf\n", log)
        self.assertIn(b"No such file", log)
        # A job of another shape makes its own; the pool follows its shape.
        jid = self.submit(job("limited", ["true"], resources={"pids": 50}))
        self.assertEqual(self.wait_job(jid)["state"], "succeeded")
        wait_for(lambda: [sid for sid in a.sandbox_entries() if self.pids_max(a, sid) == "50"],
                 what="a warm sandbox with the new limits")
        # Stopping removes the warm sandboxes too.
        self.assertEqual(a.stop(), 0)
        self.assertEqual(a.sandbox_entries(), [])


if __name__ == "__main__":
    kilntest.main()
