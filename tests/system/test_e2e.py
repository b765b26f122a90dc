"""End to end, with real sandboxes: 100 jobs through `kiln up` and through
`kiln server` + `kiln agent`, each log byte-exact and each artifact intact;
kill -9 of an agent mid-job (the job runs again on a second agent); a frozen
agent whose lease expired (its late writes are refused and it kills the job
itself); kill -9 of the server mid-job (the agent reconnects, the job
completes, its log intact); and a job writing 100 MB at full speed with the
agent's and the server's memory bounded."""
import os
import signal
import subprocess
import threading
import time

import kilntest
from kilnagent import Agent, JobCase, cgroup_pids, job, markers, remove_cgroup_parent
from kilnapi import Client, admin_token, wait_for

N_JOBS = int(os.environ.get("KILN_E2E_JOBS", "100"))

# Each job writes a payload of its own to the log and to an artifact: a few
# KiB of random bytes (binary, no trailing newline guaranteed), so a lost,
# repeated or reordered chunk shows.
PAYLOAD_JOB = ("head -c $((2000 + KILN_JOB_ID * 97 % 5000)) /dev/urandom > payload.bin; "
               "cat payload.bin")


def check_payload_job(case, api, jid):
    """The log is the header, the job's bytes, then kiln's markers (with the
    newline kiln adds when the bytes did not end with one)."""
    status, _, blob = api.raw("GET", f"/v1/jobs/{jid}/artifacts/payload.bin")
    case.assertEqual(status, 200, blob[:200])
    case.assertEqual(len(blob), 2000 + jid * 97 % 5000)
    status, _, log = api.raw("GET", f"/v1/jobs/{jid}/log")
    case.assertEqual(status, 200)
    header = b'##[kiln] step 1/1 "payload"\n'
    case.assertTrue(log.startswith(header + blob), f"job {jid}: log does not hold the payload")
    rest = log[len(header) + len(blob):]
    if not blob.endswith(b"\n"):
        case.assertTrue(rest.startswith(b"\n"), f"job {jid}: no newline before the marker")
        rest = rest[1:]
    lines = rest.decode().splitlines()
    case.assertEqual(len(lines), 3, lines)
    case.assertRegex(lines[0], r'^##\[kiln\] step 1/1 "payload" exited 0 after')
    case.assertEqual(lines[1], "##[kiln] artifacts: 1 of 1 file kept (%d bytes)" % len(blob))
    case.assertRegex(lines[2], r"^##\[kiln\] job succeeded after")


def submit_many(case, api, n):
    ids = []
    for _ in range(n):
        status, body = api.call("POST", "/v1/jobs", job_text())
        case.assertEqual(status, 201, body)
        ids.append(body["jobs"][0]["id"])
    return ids


def job_text():
    import json
    return json.dumps(job("payload-job", [{"name": "payload", "run": PAYLOAD_JOB}],
                          artifacts=["payload.bin"]))


def wait_all(api, ids, timeout=600):
    def done():
        for jid in ids:
            if api.ok("GET", f"/v1/jobs/{jid}")["state"] not in (
                    "succeeded", "failed", "cancelled", "timed_out", "lost"):
                return False
        return True
    wait_for(done, timeout=timeout, interval=0.5, what=f"{len(ids)} jobs to end")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class ManyJobsTest(JobCase):
    server_args = ("--lease-ttl", "30s")
    warm = 1

    def test_100_jobs_server_and_agent(self):
        self.start_agent(args=["--slots", "2"])
        ids = submit_many(self, self.api, N_JOBS)
        wait_all(self.api, ids)
        for jid in ids:
            j = self.job(jid)
            self.assertEqual(j["state"], "succeeded", j)
            check_payload_job(self, self.api, jid)


class UpManyJobsTest(kilntest.TempDirTestCase):
    def setUp(self):
        from kilnagent import skip_reason
        reason = skip_reason()
        if reason:
            self.skipTest(reason)
        super().setUp()

    def test_100_jobs_through_kiln_up(self):
        parent = f"/kiln-systest-e2e-up-{os.getpid()}"
        self.addCleanup(remove_cgroup_parent, parent)
        addr_file = os.path.join(self.tmp, "addr")
        env = dict(os.environ, XDG_CONFIG_HOME=os.path.join(self.tmp, "config"),
                   KILN_INIT=kilntest.KILN_INIT)
        log = open(os.path.join(self.tmp, "up.log"), "wb")
        self.addCleanup(log.close)
        p = subprocess.Popen([kilntest.KILN, "up", "--state-dir", os.path.join(self.tmp, "state"),
                              "--listen", "127.0.0.1:0", "--addr-file", addr_file, "--slots", "2",
                              "--cgroup-parent", parent], stdout=log, stderr=log, env=env)

        def stop():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
        self.addCleanup(stop)
        wait_for(lambda: os.path.exists(addr_file) or p.poll() is not None, timeout=60,
                 what="kiln up")
        self.assertIsNone(p.poll())
        with open(addr_file) as f:
            api = Client(f.read().strip(), timeout=120,
                         token=admin_token(os.path.join(self.tmp, "state")))
        self.addCleanup(api.close)
        ids = submit_many(self, api, N_JOBS)
        wait_all(api, ids)
        for jid in ids:
            self.assertEqual(api.ok("GET", f"/v1/jobs/{jid}")["state"], "succeeded")
            check_payload_job(self, api, jid)
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0)


class AgentFailureTest(JobCase):
    # Short leases, so that a dead or frozen agent's lease expires quickly.
    server_args = ("--lease-ttl", "3s")

    def ticking_job(self, retries=1):
        return self.submit(job("ticking", [
            {"name": "tick", "run": "for i in $(seq 1 40); do echo tick $KILN_ATTEMPT $i; "
                                    "sleep 0.1; done"}], retries=retries))

    def test_kill9_agent_mid_job_runs_again_on_another(self):
        a1 = self.start_agent("a1")
        jid = self.ticking_job()
        wait_for(lambda: b"tick 1 3\n" in self.log(jid), timeout=60, what="attempt 1 running")
        a1.kill9()
        a2 = self.start_agent("a2")
        j = self.wait_job(jid, timeout=120)
        self.assertEqual(j["state"], "succeeded", j)
        self.assertEqual([a["agent"] for a in j["attempts"]], ["a1", "a2"])
        self.assertEqual(j["attempts"][0]["state"], "lost")
        log2 = self.log(jid, attempt=2)
        self.assertEqual([l for l in log2.decode().splitlines() if l.startswith("tick")],
                         [f"tick 2 {i}" for i in range(1, 41)])
        # a1's sandbox outlived it; its cgroups are removed when it comes back.
        a1.start(self.api)
        self.assertEqual(a1.sandbox_entries(), [])
        self.assertIsNotNone(a2)

    def test_frozen_agent_is_fenced_out_and_kills_its_job(self):
        a1 = self.start_agent("a1")
        jid = self.ticking_job()
        wait_for(lambda: b"tick 1 3\n" in self.log(jid), timeout=60, what="attempt 1 running")
        (sid,) = a1.sandbox_entries()
        cgroups = a1.sandbox_cgroups(sid)
        a1.signal(signal.SIGSTOP)
        self.addCleanup(lambda: a1.proc and a1.signal(signal.SIGCONT))
        # Its lease expires; the job is queued again and runs on a2.
        wait_for(lambda: self.job(jid)["attempt"] == 2 or self.job(jid)["state"] == "queued",
                 timeout=60, what="the lease to expire")
        size1 = len(self.log(jid, attempt=1))
        self.start_agent("a2")
        j = self.wait_job(jid, timeout=120)
        self.assertEqual(j["state"], "succeeded", j)
        # a1 wakes up: it must not write anything for the job, and it kills
        # the job's sandbox itself (its lease could not be renewed in time).
        a1.signal(signal.SIGCONT)
        wait_for(lambda: not any(cgroup_pids(c) for c in cgroups), timeout=30,
                 what="a1 to kill its stale job")
        wait_for(lambda: "lease" in a1.read_log() and "job=%d" % jid in a1.read_log(),
                 timeout=30, what="a1 to notice")
        time.sleep(1)
        self.assertEqual(len(self.log(jid, attempt=1)), size1)
        j = self.job(jid)
        self.assertEqual(j["state"], "succeeded")
        self.assertEqual(j["attempts"][1]["agent"], "a2")
        log = a1.read_log()
        self.assertTrue("lease not renewed in time" in log or "lease lost" in log or
                        "refused" in log, log[-3000:])
        ticks = [l for l in self.log(jid, attempt=2).decode().splitlines() if l.startswith("tick")]
        self.assertEqual(ticks, [f"tick 2 {i}" for i in range(1, 41)])


class ServerCrashTest(JobCase):
    server_args = ("--lease-ttl", "10s")

    def test_kill9_server_mid_job(self):
        a = self.start_agent()
        lines = 60
        jid = self.submit(job("through-a-crash", [
            {"name": "count", "run": f"for i in $(seq 1 {lines}); do echo line $i; sleep 0.05; done"}]))
        wait_for(lambda: b"line 5\n" in self.log(jid), timeout=60, what="the job to write")
        self.server.kill9()
        time.sleep(0.5)  # the job goes on writing while the server is away
        self.server.start()
        self.api = self.server.client(timeout=120)
        self.addCleanup(self.api.close)
        j = self.wait_job(jid, timeout=120)
        self.assertEqual(j["state"], "succeeded", j)
        self.assertEqual(len(j["attempts"]), 1)
        log = self.log(jid).decode()
        got = [l for l in log.splitlines() if not l.startswith("##[kiln]")]
        self.assertEqual(got, [f"line {i}" for i in range(1, lines + 1)])
        self.assertEqual(markers(self.log(jid))[-1].split(" after")[0], "job succeeded")
        self.assertIsNotNone(a)


class BigOutputTest(JobCase):
    server_args = ("--lease-ttl", "30s")

    def setUp(self):
        # Under ASan (CI), freed memory waits in a quarantine of 256 MiB by
        # default, which is not the program's footprint: a small one keeps
        # RSS meaningful. Set before the server and agent start.
        old = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = (old + ":" if old else "") + "quarantine_size_mb=8"
        self.addCleanup(lambda: os.environ.__setitem__("ASAN_OPTIONS", old) if old is not None
                        else os.environ.pop("ASAN_OPTIONS", None))
        super().setUp()

    def test_100mb_at_full_speed_keeps_memory_bounded(self):
        a = self.start_agent()
        size = 100 * 1000 * 1000
        base_agent, base_server = rss_kib(a.proc.pid), rss_kib(self.server.proc.pid)
        peaks = {"agent": 0, "server": 0}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peaks["agent"] = max(peaks["agent"], rss_kib(a.proc.pid))
                peaks["server"] = max(peaks["server"], rss_kib(self.server.proc.pid))
                time.sleep(0.02)
        t = threading.Thread(target=sample)
        t.start()
        jid = self.submit(job("firehose", [{"name": "out", "run": f"head -c {size} /dev/zero | tr '\\0' 'x'"}]))
        j = self.wait_job(jid, timeout=300)
        stop.set()
        t.join()
        self.assertEqual(j["state"], "succeeded", j)
        # The server keeps head + tail (64 MiB); the log's logical size is all of it.
        header = len(b'##[kiln] step 1/1 "out"\n')
        status, _, tail = self.api.raw("GET", f"/v1/jobs/{jid}/log?offset={header + size}")
        self.assertEqual(status, 200)
        self.assertTrue(tail.startswith(b"\n##[kiln] step 1/1"), tail[:100])
        grow_agent = peaks["agent"] - base_agent
        grow_server = peaks["server"] - base_server
        # Bounded: the agent holds one 64 KiB read buffer and one 256 KiB
        # chunk per job, the server one chunk per request; 100 MB passed.
        self.assertLess(grow_agent, 48 * 1024, f"agent RSS grew by {grow_agent} KiB")
        self.assertLess(grow_server, 64 * 1024, f"server RSS grew by {grow_server} KiB")
        print(f"\n  100 MB: agent RSS {base_agent} -> peak {peaks['agent']} KiB, "
              f"server {base_server} -> peak {peaks['server']} KiB")


if __name__ == "__main__":
    kilntest.main()
