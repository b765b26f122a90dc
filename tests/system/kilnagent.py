"""Helpers for tests that run real jobs: a `kiln agent` process next to a
`kiln server` (kilnapi.Server), job submission and waiting, log markers, and
looking at an agent's sandboxes from the outside (their state entries and
cgroups) to check that nothing is left behind.

Every process started here is stopped by its PID in cleanups.
"""
import glob
import json
import os
import signal
import subprocess
import time

import kilnapi
import kilntest
from kilnapi import Server, wait_for

TERMINAL = ("succeeded", "failed", "cancelled", "timed_out", "lost")


def skip_reason():
    """Why real jobs cannot run here (None when they can)."""
    if not kilntest.is_root():
        return "the agent's sandboxes need root here (rootless needs a delegated cgroup)"
    if not os.path.exists(kilntest.KILN_INIT):
        return f"kiln-init not built ({kilntest.KILN_INIT})"
    return None


class Agent:
    """A `kiln agent` process with its own state directory."""

    def __init__(self, server_addr, state_dir, name, args=(), cgroup_parent=None, token=None):
        self.server_addr = server_addr
        # Given as KILN_TOKEN, as a user would; by default the server's admin token.
        self.token = token if token is not None else kilnapi.TOKENS.get(server_addr)
        self.state_dir = state_dir
        self.name = name
        self.cgroup_parent = cgroup_parent
        self.args = list(args) + (["--cgroup-parent", cgroup_parent] if cgroup_parent else [])
        self.proc = None
        self.log_path = state_dir + ".log"
        self.log = None

    def start(self, api=None, timeout=60):
        self.registrations = self.read_log().count('msg="agent registered"')
        cmd = [kilntest.KILN, "agent", "--server", self.server_addr, "--state-dir",
               self.state_dir, "--name", self.name] + self.args
        env = dict(os.environ)
        env.setdefault("KILN_INIT", kilntest.KILN_INIT)
        if self.token:
            env["KILN_TOKEN"] = self.token
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        if api is not None:
            self.wait_registered(api, timeout)
        return self

    def wait_registered(self, api, timeout=60):
        """Waits for this process's registration (its log line, then the server's view)."""
        def registered():
            if self.proc.poll() is not None:
                raise AssertionError(f"kiln agent exited with {self.proc.returncode}: "
                                     f"{self.read_log()[-2000:]}")
            if self.read_log().count('msg="agent registered"') <= self.registrations:
                return None
            for a in api.ok("GET", "/v1/agents")["agents"]:
                if a["name"] == self.name and a["online"]:
                    return a
            return None
        self.info = wait_for(registered, timeout=timeout, what=f"agent {self.name} registered")
        return self.info

    def read_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=60):
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.proc = None
        return rc

    def stop(self, timeout=60, drain=10):
        """SIGTERM (drain); after `drain` seconds a second SIGTERM (stop now:
        running jobs are killed and handed back); SIGKILL after timeout.
        Returns the exit status."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=drain)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        self.proc = None

    # ---- the agent's sandboxes, seen from outside ----

    # ---- the agent's sandboxes, seen from outside: the cgroup tree under
    # its --cgroup-parent (one directory per sandbox in each hierarchy) ----

    def sandbox_cgroups_by_id(self):
        """{sandbox id: [cgroup dirs]} under the agent's cgroup parent."""
        out = {}
        if not self.cgroup_parent:
            return out
        rel = self.cgroup_parent.strip("/")
        for parent in cgroup_parent_dirs(rel):
            for d in sorted(os.listdir(parent)):
                p = os.path.join(parent, d)
                if os.path.isdir(p) and len(d) == 16:
                    out.setdefault(d, []).append(p)
        return out

    def sandbox_entries(self):
        """Ids of the agent's sandboxes that have cgroups now."""
        return sorted(self.sandbox_cgroups_by_id())

    def sandbox_cgroups(self, sandbox_id):
        return self.sandbox_cgroups_by_id().get(sandbox_id, [])


def cgroup_parent_dirs(rel):
    """The directories a cgroup parent path (relative to each hierarchy's
    root) names, in every mounted hierarchy (v1 controllers and v2)."""
    roots = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            if parts[sep + 1] in ("cgroup", "cgroup2"):
                roots.add(parts[4])
    return [os.path.join(r, rel) for r in sorted(roots) if os.path.isdir(os.path.join(r, rel))]


def cgroup_pids(path):
    """PIDs in a cgroup directory and below it ([] once it is gone)."""
    pids = []
    for procs in glob.glob(os.path.join(path, "**", "cgroup.procs"), recursive=True):
        try:
            with open(procs) as f:
                pids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return pids


def remove_cgroup_parent(parent):
    """Removes an (empty) cgroup parent from every hierarchy."""
    for d in cgroup_parent_dirs(parent.strip("/")):
        for sub in sorted(glob.glob(os.path.join(d, "**/"), recursive=True), reverse=True):
            try:
                os.rmdir(sub)
            except OSError:
                pass


class JobCase(kilntest.TempDirTestCase):
    """A server and agents in a temp dir; jobs submitted and awaited."""

    server_args = ("--lease-ttl", "6s")
    agent_args = ()
    # Warm sandboxes (the agent's default is 1) would show among the
    # agent's sandboxes; tests that count them run without.
    warm = 0

    def setUp(self):
        reason = skip_reason()
        if reason:
            self.skipTest(reason)
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "server"), self.server_args).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client(timeout=120)
        self.addCleanup(self.api.close)
        self.agents = []

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def start_agent(self, name="a1", args=None, register=True):
        # Each agent's sandboxes under a cgroup parent of its own, so the
        # test can find them (and remove the parent afterwards).
        parent = f"/kiln-systest-{os.getpid()}-{os.path.basename(self.tmp)}-{name}"
        if not getattr(self, "agent_token", None):
            # A shared-pool agent token, minted with the admin token.
            self.agent_token = self.server.mint("agent", shared=True, name="test agents")[0]
        args = list(self.agent_args if args is None else args)
        if "--warm" not in args:
            args += ["--warm", str(self.warm)]
        a = Agent(self.server.addr, os.path.join(self.tmp, "agent-" + name), name, args,
                  cgroup_parent=parent, token=self.agent_token)
        self.addCleanup(remove_cgroup_parent, parent)
        # Cleanup registered before the start: an agent that fails to
        # register in time is still stopped (no stray process).
        self.agents.append(a)
        self.addCleanup(self.cleanup_agent, a)
        a.start(self.api if register else None)
        return a

    def cleanup_agent(self, a):
        if a.proc:
            rc = a.stop(timeout=60)
            self.assertEqual(rc, 0, "kiln agent did not stop cleanly:\n" + a.read_log()[-3000:])
        log = a.read_log()
        for bad in ("Sanitizer", "runtime error:"):
            self.assertNotIn(bad, log, log[-5000:])

    def submit(self, doc, expect=201):
        text = doc if isinstance(doc, str) else json.dumps(doc)
        status, body = self.api.call("POST", "/v1/jobs", text)
        self.assertEqual(status, expect, body)
        return body["jobs"][0]["id"] if expect == 201 else body

    def job(self, jid):
        return self.api.ok("GET", f"/v1/jobs/{jid}")

    def wait_job(self, jid, states=TERMINAL, timeout=120):
        def done():
            j = self.job(jid)
            return j if j["state"] in states else None
        return wait_for(done, timeout=timeout, interval=0.05, what=f"job {jid} in {states}")

    def log(self, jid, attempt=None):
        q = f"?attempt={attempt}" if attempt else ""
        status, _, data = self.api.raw("GET", f"/v1/jobs/{jid}/log{q}")
        self.assertEqual(status, 200, data)
        return data

    def artifact(self, jid, path):
        status, _, data = self.api.raw("GET", f"/v1/jobs/{jid}/artifacts/{path}")
        return status, data


def job(name="job", steps=("true",), **fields):
    """A job spec dict: steps are run strings or full step dicts."""
    doc = {"name": name,
           "steps": [s if isinstance(s, dict) else {"run": s} for s in steps]}
    doc.update(fields)
    return doc


def markers(log):
    """The kiln marker lines of a log (bytes), as str."""
    return [line[len(b"##[kiln] "):].decode() for line in log.split(b"\n")
            if line.startswith(b"##[kiln] ")]
