"""kiln server with a scripted fake agent: every job state transition, label
and capacity matching, priorities, long-poll dispatch, fencing (a stale
agent's writes all get 409), lease expiry and requeue, cancel, server-side
timeouts, retry, drain, restart, and the API's error answers."""
import json
import os
import socket
import threading
import time

import kilntest
from kilnapi import FakeAgent, Server, spec, wait_for


class ServerCase(kilntest.TempDirTestCase):
    server_args = ()

    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"), self.server_args).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            rc = self.server.stop()
            self.assertEqual(rc, 0, "kiln server did not stop cleanly:\n" + self.server.read_log()[-3000:])

    def agent(self, name="a1", **kw):
        a = FakeAgent(self.server.addr, name, **kw)
        a.register()
        self.addCleanup(a.close)
        return a

    def submit(self, text, expect=201, **query):
        q = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = self.api.call("POST", "/v1/jobs" + ("?" + q if q else ""), text)
        self.assertEqual(status, expect, body)
        return body

    def submit_one(self, **kw):
        return self.submit(spec(**kw))["jobs"][0]["id"]

    def job(self, jid):
        return self.api.ok("GET", f"/v1/jobs/{jid}")


class LifecycleTest(ServerCase):
    def test_health(self):
        self.assertEqual(self.api.ok("GET", "/healthz")["status"], "ok")
        self.assertEqual(self.api.ok("GET", "/readyz")["status"], "ready")

    def test_queued_leased_running_succeeded(self):
        jid = self.submit_one(name="build")
        j = self.job(jid)
        self.assertEqual(j["state"], "queued")
        self.assertEqual(j["attempt"], 0)
        self.assertEqual(j["spec"]["name"], "build")
        a = self.agent()
        lease = a.lease()
        self.assertEqual(lease["job"]["id"], jid)
        self.assertEqual(lease["attempt"], 1)
        fence = lease["fence"]
        self.assertGreater(fence, 0)
        self.assertEqual(lease["job"]["spec"]["name"], "build")
        self.assertEqual(self.job(jid)["state"], "leased")
        self.assertEqual(a.status(jid, fence)[0], 200)
        self.assertEqual(self.job(jid)["state"], "running")
        self.assertEqual(a.status(jid, fence)[0], 200)  # repeated: idempotent
        status, body = a.complete(jid, fence, "succeeded", 0)
        self.assertEqual(status, 200, body)
        self.assertFalse(body["duplicate"])
        j = self.job(jid)
        self.assertEqual(j["state"], "succeeded")
        self.assertEqual(j["exit_code"], 0)
        self.assertEqual(len(j["attempts"]), 1)
        att = j["attempts"][0]
        self.assertEqual(att["state"], "succeeded")
        self.assertEqual(att["fence"], fence)
        self.assertEqual(att["agent"], "a1")
        for k in ("leased_at", "started_at", "finished_at"):
            self.assertIsNotNone(att[k], k)
        # The agent is free again and the queue is empty.
        self.assertIsNone(a.lease(wait_ms=0))
        self.assertEqual(self.api.ok("GET", f"/v1/agents/{a.id}")["jobs"], [])

    def test_failed_and_agent_reported_timeout(self):
        a = self.agent()
        j1 = self.submit_one(name="fails")
        l1 = a.lease()
        self.assertEqual(a.complete(j1, l1["fence"], "failed", 3, "step 1 exited 3")[0], 200)
        j = self.job(j1)
        self.assertEqual((j["state"], j["exit_code"], j["message"]), ("failed", 3, "step 1 exited 3"))
        j2 = self.submit_one(name="slow")
        l2 = a.lease()
        a.status(j2, l2["fence"])
        self.assertEqual(a.complete(j2, l2["fence"], "timed_out", None)[0], 200)
        self.assertEqual(self.job(j2)["state"], "timed_out")

    def test_complete_straight_from_leased(self):
        a = self.agent()
        jid = self.submit_one()
        lease = a.lease()
        self.assertEqual(a.complete(jid, lease["fence"], "failed", 127, "image missing")[0], 200)
        self.assertEqual(self.job(jid)["state"], "failed")

    def test_duplicate_completion_is_idempotent_and_one_result_wins(self):
        a = self.agent()
        jid = self.submit_one()
        lease = a.lease()
        self.assertEqual(a.complete(jid, lease["fence"], "succeeded")[0], 200)
        status, body = a.complete(jid, lease["fence"], "succeeded")
        self.assertEqual(status, 200)
        self.assertTrue(body["duplicate"])
        status, body = a.complete(jid, lease["fence"], "failed", 1)
        self.assertEqual(status, 409, body)
        self.assertEqual(body["error"]["code"], "stale_fence")
        self.assertEqual(self.job(jid)["state"], "succeeded")

    def test_matrix_makes_one_job_per_combination(self):
        body = self.submit(spec(name="m", matrix={"os": ["a", "b"], "v": ["1", "2", "3"]}))
        self.assertEqual(len(body["jobs"]), 6)
        self.assertEqual(len({j["id"] for j in body["jobs"]}), 6)

    def test_invalid_spec_is_400_with_position(self):
        status, body = self.api.call("POST", "/v1/jobs?file=job.yaml", '{"name": "x",\n "steps": [}')
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["code"], "invalid_spec")
        self.assertIn("job.yaml:2:", body["error"]["message"])
        self.assertTrue(body["error"]["details"])
        self.assertEqual(body["error"]["details"][0]["line"], 2)


class DispatchTest(ServerCase):
    def test_long_poll_returns_when_a_job_arrives(self):
        a = self.agent()
        got = {}

        def poll():
            t0 = time.monotonic()
            got["lease"] = a.lease(wait_ms=30000, timeout=60)
            got["secs"] = time.monotonic() - t0

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.3)
        jid = self.submit_one()
        t.join(60)
        self.assertFalse(t.is_alive())
        self.assertEqual(got["lease"]["job"]["id"], jid)
        self.assertLess(got["secs"], 20)

    def test_long_poll_times_out_with_204(self):
        a = self.agent()
        t0 = time.monotonic()
        self.assertIsNone(a.lease(wait_ms=300))
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)

    def test_labels_case_insensitive_key_value_exact(self):
        a = self.agent(labels=["Linux", "image:node:18", "x86_64"], capacity={"slots": 4})
        j_ok = self.submit_one(runs_on=["LINUX", "image:NODE:18"])
        j_other = self.submit_one(runs_on=["linux", "image:node:20"])
        lease = a.lease()
        self.assertEqual(lease["job"]["id"], j_ok)
        self.assertIsNone(a.lease(wait_ms=0))
        j = self.job(j_other)
        self.assertFalse(j["schedulable"])
        self.assertIn("image:node:20", j["reason"])

    def test_capacity_and_unschedulable_until_an_agent_fits(self):
        small = self.agent("small", labels=["linux"], capacity={"slots": 1, "cpus": 2, "gpus": 0})
        jid = self.submit_one(runs_on=["linux", "gpu-count:2"])
        j = self.job(jid)
        self.assertFalse(j["schedulable"])
        self.assertIn("gpus 2", j["reason"])
        self.assertIsNone(small.lease(wait_ms=0))
        big = self.agent("big", labels=["linux"], capacity={"slots": 1, "gpus": 2})
        self.assertTrue(self.job(jid)["schedulable"])
        self.assertEqual(big.lease()["job"]["id"], jid)
        # cpus: two jobs of 1.5 cpus do not fit a 2-cpu agent at once.
        j1 = self.submit_one(name="c1", resources={"cpus": 1.5})
        j2 = self.submit_one(name="c2", resources={"cpus": 1.5})
        wide = self.agent("wide", labels=["linux"], capacity={"slots": 4, "cpus": 2})
        l1 = wide.lease()
        self.assertEqual(l1["job"]["id"], j1)
        self.assertIsNone(wide.lease(wait_ms=0))
        wide.complete(j1, l1["fence"])
        self.assertEqual(wide.lease()["job"]["id"], j2)

    def test_no_agent_registered_says_so(self):
        jid = self.submit_one()
        self.assertEqual(self.job(jid)["reason"], "no agent is registered")

    def test_priority_then_submission_order(self):
        a = self.agent(capacity={"slots": 10})
        low = self.submit_one(name="low", priority=-5)
        first = self.submit_one(name="first")
        high = self.submit_one(name="high", priority=10)
        second = self.submit_one(name="second")
        order = [a.lease()["job"]["id"] for _ in range(4)]
        self.assertEqual(order, [high, first, second, low])

    def test_drained_agent_gets_nothing_until_undrained(self):
        a = self.agent()
        self.assertTrue(self.api.ok("POST", f"/v1/agents/{a.id}/drain", {})["draining"])
        jid = self.submit_one()
        self.assertIsNone(a.lease(wait_ms=200))
        self.assertFalse(self.api.ok("POST", f"/v1/agents/{a.id}/drain", {"draining": False})["draining"])
        self.assertEqual(a.lease()["job"]["id"], jid)

    def test_agents_list_and_describe(self):
        a = self.agent("host-1", labels=["linux", "gpu"], capacity={"slots": 2, "memory": "4Gi"})
        jid = self.submit_one()
        lease = a.lease()
        agents = self.api.ok("GET", "/v1/agents")["agents"]
        self.assertEqual([x["name"] for x in agents], ["host-1"])
        self.assertEqual(agents[0]["capacity"]["memory"], 4 << 30)
        self.assertTrue(agents[0]["online"])
        d = self.api.ok("GET", f"/v1/agents/{a.id}")
        self.assertEqual(d["jobs"], [jid])
        self.assertEqual(d["leases"][0]["fence"], lease["fence"])
        self.assertEqual(d["used"]["slots"], 1)
        # Registering again under the same name keeps the id.
        again = FakeAgent(self.server.addr, "host-1", labels=["linux"])
        self.assertEqual(again.register()["id"], a.id)
        again.close()

    def test_cancel_queued_and_running(self):
        a = self.agent()
        queued = self.submit_one(name="q", runs_on=["nowhere"])
        body = self.api.ok("POST", f"/v1/jobs/{queued}/cancel")
        self.assertEqual((body["state"], body["previous_state"]), ("cancelled", "queued"))
        self.assertEqual(self.job(queued)["state"], "cancelled")
        status, body = self.api.call("POST", f"/v1/jobs/{queued}/cancel")
        self.assertEqual(status, 409)

        running = self.submit_one(name="r")
        lease = a.lease()
        a.status(running, lease["fence"])
        self.assertEqual(self.api.ok("POST", f"/v1/jobs/{running}/cancel")["previous_state"], "running")
        hb = a.heartbeat([(running, lease["fence"])])
        self.assertEqual(hb["cancel"], [{"id": running, "fence": lease["fence"], "reason": "cancelled"}])
        # Another result is refused; acknowledging the same outcome is harmless.
        status, body = a.complete(running, lease["fence"], "succeeded")
        self.assertEqual(status, 409, body)
        self.assertIn("cancelled", body["error"]["message"])
        status, body = a.complete(running, lease["fence"], "cancelled")
        self.assertEqual(status, 200, body)
        self.assertTrue(body["duplicate"])
        j = self.job(running)
        self.assertEqual(j["state"], "cancelled")
        self.assertEqual(j["attempts"][0]["state"], "cancelled")

    def test_retry_makes_a_new_job(self):
        a = self.agent()
        jid = self.submit_one(name="flaky")
        lease = a.lease()
        a.complete(jid, lease["fence"], "failed", 1)
        status, body = self.api.call("POST", f"/v1/jobs/{jid}/retry")
        self.assertEqual(status, 201, body)
        new = body["jobs"][0]
        self.assertNotEqual(new["id"], jid)
        self.assertEqual(new["retry_of"], jid)
        self.assertEqual(new["name"], "flaky")
        self.assertEqual(a.lease()["job"]["id"], new["id"])
        status, body = self.api.call("POST", f"/v1/jobs/{new['id']}/retry")
        self.assertEqual(status, 409)
        self.assertEqual(body["error"]["code"], "not_finished")

    def test_list_filters_and_pages(self):
        a = self.agent()
        ids = [self.submit_one(name=f"n{i % 2}", runs_on=["linux"] + (["gpu"] if i == 3 else []))
               for i in range(6)]
        lease = a.lease()
        a.complete(lease["job"]["id"], lease["fence"])
        page = self.api.ok("GET", "/v1/jobs?limit=4")
        self.assertEqual([j["id"] for j in page["jobs"]], ids[::-1][:4])
        rest = self.api.ok("GET", f"/v1/jobs?limit=4&before={page['next']}")
        self.assertEqual([j["id"] for j in rest["jobs"]], ids[::-1][4:])
        self.assertIsNone(rest["next"])
        self.assertEqual(len(self.api.ok("GET", "/v1/jobs?state=queued")["jobs"]), 5)
        self.assertEqual(len(self.api.ok("GET", "/v1/jobs?state=succeeded,failed")["jobs"]), 1)
        self.assertEqual([j["id"] for j in self.api.ok("GET", "/v1/jobs?label=GPU")["jobs"]], [ids[3]])
        self.assertEqual(len(self.api.ok("GET", "/v1/jobs?name=n1")["jobs"]), 3)
        status, body = self.api.call("GET", "/v1/jobs?state=done")
        self.assertEqual(status, 400)
        self.assertIn("unknown state 'done'", body["error"]["message"])


class LeaseExpiryTest(ServerCase):
    server_args = ("--lease-ttl", "1s", "--timeout-grace", "1s")

    def test_stale_agent_is_fenced_out_everywhere(self):
        jid = self.submit_one(name="fenced", retries=1)
        old = self.agent("old")
        l1 = old.lease()
        f1 = l1["fence"]
        old.status(jid, f1)
        # The old agent goes silent: the lease expires and the job is queued again.
        wait_for(lambda: self.job(jid)["state"] == "queued", what="requeue after lease expiry")
        j = self.job(jid)
        self.assertEqual(j["attempt"], 1)
        self.assertEqual(j["attempts"][0]["state"], "lost")
        self.assertIn("lease expired", j["attempts"][0]["message"])
        new = self.agent("new")
        l2 = new.lease()
        f2 = l2["fence"]
        self.assertEqual(l2["attempt"], 2)
        self.assertGreater(f2, f1)
        # Every write of the stale holder is refused and changes nothing.
        self.assertEqual(old.status(jid, f1)[0], 409)
        self.assertEqual(old.log(jid, f1, 0, "stale output\n")[0], 409)
        self.assertEqual(old.artifact(jid, f1, "out.txt", b"stale")[0], 409)
        status, body = old.complete(jid, f1, "succeeded")
        self.assertEqual(status, 409, body)
        self.assertEqual(body["error"]["code"], "stale_fence")
        hb = old.heartbeat([(jid, f1)])
        self.assertEqual(hb["cancel"][0]["id"], jid)
        # The current holder goes on.
        self.assertEqual(new.log(jid, f2, 0, "fresh\n")[0], 200)
        self.assertEqual(new.complete(jid, f2, "succeeded")[0], 200)
        j = self.job(jid)
        self.assertEqual(j["state"], "succeeded")
        self.assertEqual([a["state"] for a in j["attempts"]], ["lost", "succeeded"])
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jid}/artifacts")["artifacts"], [])
        status, _, data = self.api.raw("GET", f"/v1/jobs/{jid}/log")
        self.assertEqual(data, b"fresh\n")

    def test_heartbeats_keep_the_lease(self):
        jid = self.submit_one(retries=0)
        a = self.agent()
        lease = a.lease()
        for _ in range(8):
            hb = a.heartbeat([(jid, lease["fence"])])
            self.assertEqual(hb["cancel"], [])
            time.sleep(0.3)
        self.assertEqual(self.job(jid)["state"], "leased")
        self.assertEqual(a.complete(jid, lease["fence"])[0], 200)

    def test_expiry_without_retries_is_lost(self):
        jid = self.submit_one(retries=0)
        a = self.agent()
        lease = a.lease()
        wait_for(lambda: self.job(jid)["state"] == "lost", what="lost")
        j = self.job(jid)
        self.assertIn("no retries are left", j["message"])
        self.assertEqual(a.complete(jid, lease["fence"])[0], 409)

    def test_server_enforces_job_timeout(self):
        jid = self.submit_one(timeout="1s")
        a = self.agent()
        lease = a.lease()
        a.status(jid, lease["fence"])
        # The agent keeps its lease alive but never finishes: the server ends it.
        def timed_out():
            hb = a.heartbeat([(jid, lease["fence"])])
            return self.job(jid)["state"] == "timed_out" and hb
        wait_for(timed_out, what="server-side timeout")
        hb = a.heartbeat([(jid, lease["fence"])])
        self.assertEqual(hb["cancel"][0]["reason"], "timed_out")
        self.assertIn("timeout of 1s", self.job(jid)["message"])


class RestartTest(ServerCase):
    def test_state_survives_a_restart(self):
        a = self.agent()
        done = self.submit_one(name="done")
        running = self.submit_one(name="running")
        queued = self.submit_one(name="queued", runs_on=["elsewhere"])
        l1 = a.lease()
        a.complete(done, l1["fence"])
        l2 = a.lease()
        a.status(running, l2["fence"])
        self.stop_server()
        self.server.start()
        api = self.server.client()
        self.addCleanup(api.close)
        self.assertEqual(api.ok("GET", f"/v1/jobs/{done}")["state"], "succeeded")
        self.assertEqual(api.ok("GET", f"/v1/jobs/{running}")["state"], "running")
        self.assertEqual(api.ok("GET", f"/v1/jobs/{queued}")["state"], "queued")
        # The holder of the lease can go on after the restart, and fences keep increasing.
        a2 = FakeAgent(self.server.addr, "a1")
        a2.register()
        self.addCleanup(a2.close)
        self.assertEqual(a2.heartbeat([(running, l2["fence"])])["cancel"], [])
        self.assertEqual(a2.complete(running, l2["fence"])[0], 200)
        new = self.submit(spec(name="after"), expect=201)["jobs"][0]["id"]
        self.assertGreater(new, queued)
        self.assertGreater(a2.lease()["fence"], l2["fence"])

    def test_one_server_per_state_dir(self):
        other = Server(self.server.state_dir)
        with self.assertRaises(AssertionError) as cm:
            other.start(timeout=10)
        self.assertIn("in use by another kiln server", str(cm.exception))


class ErrorsTest(ServerCase):
    server_args = ("--body-max", "64Ki")

    def test_unknown_ids_and_paths_are_404(self):
        for path in ("/v1/jobs/999", "/v1/jobs/abc", "/v1/agents/5", "/v1/nothing", "/"):
            status, body = self.api.call("GET", path)
            self.assertEqual(status, 404, path)
            self.assertEqual(set(body["error"]), {"code", "message"})
        status, body = self.api.call("POST", "/v1/jobs/999/cancel")
        self.assertEqual(status, 404)
        status, body = self.api.call("POST", "/v1/jobs/999/complete", {"fence": 1, "state": "succeeded"})
        self.assertEqual(status, 404)

    def test_wrong_method_is_405_with_allow(self):
        status, headers, data = self.api.raw("DELETE", "/v1/jobs")
        self.assertEqual(status, 405)
        self.assertIn("GET", headers["allow"])
        self.assertIn("POST", headers["allow"])
        self.assertEqual(json.loads(data)["error"]["code"], "method_not_allowed")

    def test_malformed_json_is_400_with_position(self):
        a = self.agent()
        status, _, data = self.api.raw("POST", f"/v1/agents/{a.id}/lease", '{"wait_ms": 1,\n  oops}')
        self.assertEqual(status, 400)
        msg = json.loads(data)["error"]["message"]
        self.assertIn("line 2", msg)
        self.assertIn("column", msg)
        status, body = self.api.call("POST", "/v1/agents", {"name": "x", "labels": ["bad label!"]})
        self.assertEqual(status, 400)
        self.assertIn("labels[0]", body["error"]["message"])
        status, body = self.api.call("POST", "/v1/agents", {"name": "x", "capacity": {"slots": "many"}})
        self.assertEqual(status, 400)
        self.assertIn("capacity.slots", body["error"]["message"])

    def test_oversized_body_is_413_before_it_is_sent(self):
        # Announce 100 MiB and send none of it: the answer must come anyway.
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n"
                      b"Authorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\n\r\n" % self.server.token.encode())
            data = s.recv(65536)
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:100])
        self.assertIn(b"body_too_large", data)
        # Chunked bodies are cut off when they pass the limit.
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Authorization: Bearer %s\r\n\r\n" % self.server.token.encode())
            chunk = b"x" * 16384
            for _ in range(16):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
            data = s.recv(65536)
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:100])
        # One that never ends is cut off (read and dropped, never stored).
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=20) as s:
            s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Authorization: Bearer %s\r\n\r\n" % self.server.token.encode())
            chunk = b"y" * 65536
            with self.assertRaises((BrokenPipeError, ConnectionResetError)):
                for _ in range(10000):
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.assertEqual(self.api.ok("GET", "/healthz")["status"], "ok")


if __name__ == "__main__":
    kilntest.main()
