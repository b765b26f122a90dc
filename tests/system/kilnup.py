"""A `kiln up` process (server + agent in one) for tests that need real jobs
and a live fleet: kiln top in tmux, Prometheus scraping. It binds
127.0.0.1:0, reports its address through --addr-file (its admin token is in
<state>/admin.token: self.token), keeps the client config untouched
(--no-config), puts its sandboxes under a cgroup parent of
its own, and is stopped by its PID (SIGTERM, then a second SIGTERM to stop
running jobs at once, then SIGKILL)."""
import os
import signal
import subprocess

import kilnagent
import kilnapi
import kilntest
from kilnapi import Client, admin_token, wait_for


def skip_reason():
    return kilnagent.skip_reason()


class Up:
    def __init__(self, tmp, name="up", args=()):
        self.tmp = tmp
        self.state = os.path.join(tmp, name)
        self.addr_file = self.state + ".addr"
        self.log_path = self.state + ".log"
        self.cgroup_parent = f"/kiln-systest-{os.getpid()}-{os.path.basename(tmp)}-{name}"
        self.args = list(args)
        self.proc = None
        self.addr = None

    def start(self, timeout=60):
        """Starts it and waits for its agent; stops it again if that fails."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout):
        env = dict(os.environ)
        env.pop("KILN_ADDR", None)
        env.setdefault("KILN_INIT", kilntest.KILN_INIT)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [kilntest.KILN, "up", "--state-dir", self.state, "--listen", "127.0.0.1:0",
             "--addr-file", self.addr_file, "--no-config", "--cgroup-parent",
             self.cgroup_parent] + self.args,
            stdout=self.log, stderr=self.log, env=env)
        wait_for(lambda: os.path.exists(self.addr_file) or self.proc.poll() is not None,
                 timeout=timeout, what="kiln up")
        if self.proc.poll() is not None:
            raise AssertionError(f"kiln up exited with {self.proc.returncode}: "
                                 f"{self.read_log()[-2000:]}")
        with open(self.addr_file) as f:
            self.addr = f.read().strip()
        # Its first admin token: Clients of this address use it by default.
        self.token = admin_token(self.state)
        kilnapi.TOKENS[self.addr] = self.token
        api = Client(self.addr)
        try:
            wait_for(lambda: any(a["online"] for a in api.ok("GET", "/v1/agents")["agents"]),
                     timeout=timeout, what="kiln up's agent registered")
        finally:
            api.close()
        return self

    def read_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=60):
        """Returns the exit status (None if it was not running)."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)  # stop running jobs now
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.log.close()
        rc = self.proc.returncode
        self.proc = None
        kilnagent.remove_cgroup_parent(self.cgroup_parent)
        return rc
