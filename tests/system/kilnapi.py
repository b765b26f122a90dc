"""Helpers for tests of `kiln server`: start/stop/kill a real server, talk to
its HTTP API, and a scripted fake agent (the agent protocol of
docs/internals/server.md, nothing else).

Python stdlib only. Every server binds 127.0.0.1:0 and reports its port
through --addr-file; every process started here is stopped by its PID.

Tokens: a server writes its first admin token to <state>/admin.token on its
first start; Server.start() reads it, and every Client of that address sends
it unless given another (token="" sends none). FakeAgent uses the job token
each lease carries for that lease's writes, as a real agent does.
"""
import http.client
import json
import os
import signal
import subprocess
import time

import kilntest

# address -> the admin token of the server listening there (set by Server.start)
TOKENS = {}


def admin_token(state_dir):
    """The first admin token a server wrote to its state directory."""
    with open(os.path.join(state_dir, "admin.token")) as f:
        return f.read().strip()


class ApiError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Client:
    """One keep-alive HTTP connection to the server (reconnects on failure)."""

    def __init__(self, addr, timeout=30, token=None):
        host, port = addr.rsplit(":", 1)
        self.host, self.port, self.timeout = host, int(port), timeout
        self.token = TOKENS.get(addr) if token is None else token
        self.conn = None

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None

    def raw(self, method, path, body=None, headers=None, timeout=None):
        """Returns (status, headers dict (lower-case), body bytes)."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        headers = dict(headers or {})
        if self.token and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = "Bearer " + self.token
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port,
                                                       timeout=timeout or self.timeout)
            elif timeout:
                self.conn.timeout = timeout
                if self.conn.sock:
                    self.conn.sock.settimeout(timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if hdrs.get("connection", "").lower() == "close":
                    self.close()
                return resp.status, hdrs, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed: one retry on a new one.
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def call(self, method, path, body=None, expect=None, **kw):
        """JSON call; returns (status, parsed body or None)."""
        status, _, data = self.raw(method, path, body, **kw)
        parsed = json.loads(data) if data else None
        if expect is not None and status != expect:
            raise ApiError(status, data.decode(errors="replace"))
        return status, parsed

    def ok(self, method, path, body=None, **kw):
        status, parsed = self.call(method, path, body, **kw)
        if status // 100 != 2:
            raise ApiError(status, parsed)
        return parsed


class Server:
    """A `kiln server` process on 127.0.0.1:<free port> with its own state dir."""

    def __init__(self, state_dir, args=(), env=None):
        self.state_dir = state_dir
        self.args = list(args)
        self.env = env
        self.proc = None
        self.addr = None
        self.port = 0
        self.log_path = os.path.join(state_dir + ".log")
        self.token = None

    def start(self, timeout=30):
        addr_file = self.state_dir + ".addr"
        if os.path.exists(addr_file):
            os.unlink(addr_file)
        listen = f"127.0.0.1:{self.port}"
        cmd = [kilntest.KILN, "server", "--listen", listen, "--state-dir", self.state_dir,
               "--addr-file", addr_file] + self.args
        full_env = dict(os.environ)
        if self.env:
            full_env.update(self.env)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=full_env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kiln server exited with {self.proc.returncode}: "
                                     f"{self.read_log()[-2000:]}")
            if os.path.exists(addr_file):
                with open(addr_file) as f:
                    self.addr = f.read().strip()
                if self.addr:
                    self.port = int(self.addr.rsplit(":", 1)[1])
                    self.token = admin_token(self.state_dir)
                    TOKENS[self.addr] = self.token
                    return self
            time.sleep(0.02)
        raise AssertionError("kiln server did not start")

    def read_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def client(self, **kw):
        kw.setdefault("token", self.token)
        return Client(self.addr, **kw)

    def mint(self, role, org=None, name=None, shared=False, **kw):
        """Creates a token with the admin token; returns (token, id)."""
        c = self.client()
        try:
            body = {"role": role, "shared": shared, **kw}
            if org:
                body["org"] = org
            if name:
                body["name"] = name
            ans = c.ok("POST", "/v1/tokens", body)
            return ans["token"], ans["id"]
        finally:
            c.close()

    def org(self, name):
        """Creates an org with the admin token; returns its id."""
        c = self.client()
        try:
            return c.ok("POST", "/v1/orgs", {"name": name})["id"]
        finally:
            c.close()

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL; returns the exit status."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        self.proc = None


def spec(name="job", runs_on=("linux",), steps=("true",), **fields):
    """A job spec as JSON text (the spec grammar of docs/job-spec.md)."""
    doc = {"name": name, "runs-on": list(runs_on), "steps": [{"run": s} for s in steps]}
    doc.update(fields)
    return json.dumps(doc)


class FakeAgent:
    """Speaks the agent protocol: register, lease, status, log, artifact,
    heartbeat, complete. Records every answer so tests can check them."""

    def __init__(self, addr, name, labels=("linux",), capacity=None, token=None, pool=None):
        self.c = Client(addr, timeout=90, token=token)
        self.name = name
        self.labels = list(labels)
        self.capacity = capacity or {"slots": 4}
        self.pool = pool
        self.id = None
        self.job_tokens = {}  # (job, fence) -> the lease's job token

    def job_auth(self, job, fence):
        """The lease's own token for writes to (job, fence); else the agent's."""
        tok = self.job_tokens.get((job, fence))
        return {"Authorization": "Bearer " + tok} if tok else {}

    def close(self):
        self.c.close()

    def register(self):
        req = {"name": self.name, "labels": self.labels, "capacity": self.capacity}
        if self.pool:
            req["pool"] = self.pool
        body = self.c.ok("POST", "/v1/agents", req)
        self.id = body["id"]
        return body

    def lease(self, wait_ms=0, timeout=None):
        """Returns the lease body, or None on 204."""
        status, body = self.c.call("POST", f"/v1/agents/{self.id}/lease", {"wait_ms": wait_ms},
                                   timeout=timeout)
        if status == 204:
            return None
        if status != 200:
            raise ApiError(status, body)
        self.job_tokens[(body["job"]["id"], body["fence"])] = body["token"]
        return body

    def status(self, job, fence, state="running"):
        return self.c.call("POST", f"/v1/jobs/{job}/status", {"fence": fence, "state": state},
                           headers=self.job_auth(job, fence))

    def log(self, job, fence, offset, data):
        if isinstance(data, str):
            data = data.encode()
        status, _, body = self.c.raw("POST", f"/v1/jobs/{job}/log?fence={fence}&offset={offset}",
                                     data, {"Content-Type": "application/octet-stream",
                                            **self.job_auth(job, fence)})
        return status, json.loads(body) if body else None

    def artifact(self, job, fence, path, data, sha256=None):
        q = f"?fence={fence}" + (f"&sha256={sha256}" if sha256 else "")
        status, _, body = self.c.raw("PUT", f"/v1/jobs/{job}/artifacts/{path}{q}", data,
                                     {"Content-Type": "application/octet-stream",
                                      **self.job_auth(job, fence)})
        return status, json.loads(body) if body else None

    def heartbeat(self, jobs):
        return self.c.ok("POST", f"/v1/agents/{self.id}/heartbeat",
                         {"jobs": [{"id": j, "fence": f} for j, f in jobs]})

    def complete(self, job, fence, state="succeeded", exit_code=0, message=None):
        body = {"fence": fence, "state": state, "exit_code": exit_code}
        if message is not None:
            body["message"] = message
        return self.c.call("POST", f"/v1/jobs/{job}/complete", body,
                           headers=self.job_auth(job, fence))


def wait_for(pred, timeout=30, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
