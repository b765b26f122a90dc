"""Crash safety: SIGKILL the server 20 times while producers submit thousands
of jobs and fake agents lease and complete them, restarting it each time on
the same port. Then, from the clients' records:
  - every job whose submit got a 2xx still exists (jobs lost = 0);
  - no job has two accepted results: at most one fence per job ever got a
    2xx for its completion (and the store agrees: at most one attempt of a
    job succeeded);
  - every accepted job ends (agents keep working across the restarts);
and the database passes PRAGMA integrity_check."""
import http.client
import json
import os
import random
import sqlite3
import threading
import time

import kilntest
from kilnapi import Server

KILLS = int(os.environ.get("KILN_CRASH_KILLS", "20"))
MIN_JOBS = int(os.environ.get("KILN_CRASH_JOBS", "3000"))
PRODUCERS, AGENTS = 4, 4
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class Conn:
    """One HTTP connection that reconnects after any transport error."""

    def __init__(self, port, token=None):
        self.port = port
        self.headers = {"Authorization": "Bearer " + token} if token else {}
        self.c = None

    def close(self):
        if self.c:
            self.c.close()
            self.c = None

    def call(self, method, path, body=None, timeout=10):
        """(status, parsed body); raises on a transport error (outcome unknown)."""
        if self.c is None:
            self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            self.c.request(method, path, body=json.dumps(body) if isinstance(body, dict) else body,
                           headers=self.headers)
            r = self.c.getresponse()
            data = r.read()
            return r.status, (json.loads(data) if data else None)
        except TRANSPORT_ERRORS:
            self.c.close()
            self.c = None
            raise


class CrashTest(kilntest.TempDirTestCase):
    def test_kill9_under_load_loses_nothing_and_accepts_one_result(self):
        state = os.path.join(self.tmp, "state")
        server = Server(state, ["--lease-ttl", "2s"]).start()
        self.addCleanup(lambda: server.proc and server.stop())
        port = server.port
        stop_producing = threading.Event()
        stop_agents = threading.Event()
        lock = threading.Lock()
        accepted = set()                 # job ids whose submit got a 2xx
        results = {}                     # job id -> set of fences whose completion got a 2xx
        fresh_results = {}               # job id -> count of 2xx completions that were not duplicates
        errors = []

        def producer(n):
            c = Conn(port, server.token)
            spec = {"name": f"crash-{n}", "runs-on": ["linux"], "retries": 10,
                    "steps": [{"run": "true"}]}
            while not stop_producing.is_set():
                try:
                    status, body = c.call("POST", "/v1/jobs", json.dumps(spec))
                except TRANSPORT_ERRORS:
                    time.sleep(0.01)
                    continue
                if status == 201:
                    with lock:
                        accepted.update(j["id"] for j in body["jobs"])
                elif status != 503:
                    errors.append(f"submit: HTTP {status} {body}")
            c.close()

        def call_until_answered(c, method, path, body):
            """Retransmits until the server gives a definitive answer."""
            while not stop_agents.is_set():
                try:
                    return c.call(method, path, body)
                except TRANSPORT_ERRORS:
                    time.sleep(0.02)
            return None, None

        def agent(n):
            c = Conn(port, server.token)
            status, body = call_until_answered(c, "POST", "/v1/agents",
                                               {"name": f"agent-{n}", "labels": ["linux"],
                                                "capacity": {"slots": 1}})
            aid = body["id"]
            while not stop_agents.is_set():
                try:
                    status, body = c.call("POST", f"/v1/agents/{aid}/lease", {"wait_ms": 500})
                except TRANSPORT_ERRORS:
                    time.sleep(0.02)
                    continue
                if status != 200:
                    continue
                jid, fence = body["job"]["id"], body["fence"]
                call_until_answered(c, "POST", f"/v1/jobs/{jid}/status",
                                    {"fence": fence, "state": "running"})
                status, body = call_until_answered(c, "POST", f"/v1/jobs/{jid}/complete",
                                                   {"fence": fence, "state": "succeeded",
                                                    "exit_code": 0})
                if status == 200:
                    with lock:
                        results.setdefault(jid, set()).add(fence)
                        if not body["duplicate"]:
                            fresh_results[jid] = fresh_results.get(jid, 0) + 1
                elif status not in (409, None):
                    errors.append(f"complete: HTTP {status} {body}")
            c.close()

        threads = [threading.Thread(target=producer, args=(i,)) for i in range(PRODUCERS)]
        threads += [threading.Thread(target=agent, args=(i,)) for i in range(AGENTS)]
        for t in threads:
            t.start()
        try:
            rnd = random.Random(42)
            for k in range(KILLS):
                time.sleep(rnd.uniform(0.3, 0.9))
                server.kill9()
                server.start()
            # Keep producing until enough jobs were accepted, then let the agents drain.
            deadline = time.monotonic() + 120
            while len(accepted) < MIN_JOBS and time.monotonic() < deadline:
                time.sleep(0.2)
            stop_producing.set()
            api = Conn(port, server.token)
            def pending():
                _, body = api.call("GET", "/v1/jobs?state=queued,leased,running&limit=1")
                return body["jobs"]
            deadline = time.monotonic() + 180
            while pending() and time.monotonic() < deadline:
                time.sleep(0.2)
            api.close()
        finally:
            stop_producing.set()
            stop_agents.set()
            for t in threads:
                t.join(60)

        print(f"# {KILLS} kills, {len(accepted)} jobs accepted, "
              f"{sum(len(v) for v in results.values())} results accepted", flush=True)
        self.assertEqual(errors, [])
        self.assertGreaterEqual(len(accepted), MIN_JOBS)

        # Every accepted job exists and ended; none has two accepted results.
        api = Conn(port, server.token)
        self.addCleanup(api.close)
        lost, states = [], {}
        for jid in sorted(accepted):
            status, body = api.call("GET", f"/v1/jobs/{jid}")
            if status != 200:
                lost.append(jid)
                continue
            states[body["state"]] = states.get(body["state"], 0) + 1
        print(f"# final states: {states}", flush=True)
        self.assertEqual(lost, [], "accepted jobs missing after the crashes")
        double = {j: f for j, f in results.items() if len(f) > 1}
        self.assertEqual(double, {}, "jobs with two accepted results (fences)")
        self.assertEqual({j: n for j, n in fresh_results.items() if n > 1}, {})
        self.assertEqual(states, {"succeeded": len(accepted)})
        # Every result an agent saw accepted is the job's stored result.
        for jid, fences in list(results.items())[:500]:
            _, body = api.call("GET", f"/v1/jobs/{jid}")
            self.assertEqual(body["fence"], next(iter(fences)))
            self.assertEqual(body["state"], "succeeded")

        server.stop()
        db = sqlite3.connect(os.path.join(state, "kiln.db"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        twice = db.execute("SELECT job_id, count(*) FROM attempts WHERE state = 3 "
                           "GROUP BY job_id HAVING count(*) > 1").fetchall()
        self.assertEqual(twice, [])
        fences = db.execute("SELECT count(*), count(DISTINCT fence) FROM attempts").fetchone()
        self.assertEqual(fences[0], fences[1])


if __name__ == "__main__":
    kilntest.main()
