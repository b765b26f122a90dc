"""kiln server's agent calls for prompt cancels and clean hand-backs: the
heartbeat long-poll (parked until a lease of the agent is taken back, or its
wait passes) and POST /v1/agents/{id}/release (leases handed back, queued
again at once). Driven with the scripted fake agent of kilnapi."""
import os
import threading
import time

import kilntest
from kilnapi import FakeAgent, Server, spec, wait_for

# How long a woken heartbeat may take to come back. Generous for a loaded
# 2-core machine, and far below the waits used (20 s), so it still proves
# that the cancel woke the request rather than its wait running out.
WAKE_BOUND = 3.0


class Case(kilntest.TempDirTestCase):
    server_args = ()

    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"), self.server_args).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def agent(self, name="a1"):
        a = FakeAgent(self.server.addr, name)
        a.register()
        self.addCleanup(a.close)
        return a

    def submit(self, **kw):
        status, body = self.api.call("POST", "/v1/jobs", spec(**kw))
        self.assertEqual(status, 201, body)
        return body["jobs"][0]["id"]

    def job(self, jid):
        return self.api.ok("GET", f"/v1/jobs/{jid}")

    def beat(self, a, jobs, wait_ms=None, timeout=60, client=None):
        body = {"jobs": [{"id": j, "fence": f} for j, f in jobs]}
        if wait_ms is not None:
            body["wait_ms"] = wait_ms
        t0 = time.monotonic()
        c = client or a.c
        status, reply = c.call("POST", f"/v1/agents/{a.id}/heartbeat", body, timeout=timeout)
        return status, reply, time.monotonic() - t0

    def beat_in_thread(self, a, jobs, wait_ms):
        """A heartbeat on its own connection, on a thread; out["result"] when done."""
        out = {}
        client = self.server.client()
        self.addCleanup(client.close)

        def run():
            try:
                out["result"] = self.beat(a, jobs, wait_ms, client=client)
            except OSError as e:
                out["error"] = e
        t = threading.Thread(target=run)
        t.start()
        self.addCleanup(t.join, 70)
        return t, out


class HeartbeatLongPollTest(Case):
    def test_without_wait_it_answers_at_once(self):
        a = self.agent()
        status, reply, _ = self.beat(a, [])
        self.assertEqual(status, 200)
        self.assertEqual(reply["cancel"], [])
        self.assertNotIn("wait_ms", reply)

    def test_parks_until_the_wait_passes(self):
        a = self.agent()
        jid = self.submit()
        lease = a.lease()
        status, reply, took = self.beat(a, [(jid, lease["fence"])], wait_ms=1500)
        self.assertEqual(status, 200)
        self.assertEqual(reply["cancel"], [])
        self.assertEqual(reply["wait_ms"], 1500)
        self.assertGreaterEqual(took, 1.2)
        # The lease was renewed: the job is still the agent's.
        self.assertEqual(a.complete(jid, lease["fence"])[0], 200)

    def test_a_cancel_wakes_the_parked_heartbeat(self):
        a = self.agent()
        jid = self.submit()
        lease = a.lease()
        a.status(jid, lease["fence"])
        t, out = self.beat_in_thread(a, [(jid, lease["fence"])], 20000)
        time.sleep(0.3)  # let it park (an early cancel is answered at once anyway)
        t0 = time.monotonic()
        self.api.ok("POST", f"/v1/jobs/{jid}/cancel")
        t.join(30)
        status, reply, _ = out["result"]
        self.assertLess(time.monotonic() - t0, WAKE_BOUND)
        self.assertEqual(status, 200)
        self.assertEqual(reply["cancel"], [{"id": jid, "fence": lease["fence"], "reason": "cancelled"}])

    def test_an_unlisted_lease_taken_back_is_reported_too(self):
        # A lease granted after the heartbeat was sent is not in its list.
        a = self.agent()
        t, out = self.beat_in_thread(a, [], 20000)
        time.sleep(0.3)
        jid = self.submit()
        lease = a.lease()
        t0 = time.monotonic()
        self.api.ok("POST", f"/v1/jobs/{jid}/cancel")
        t.join(30)
        self.assertLess(time.monotonic() - t0, WAKE_BOUND)
        status, reply, _ = out["result"]
        self.assertEqual(reply["cancel"], [{"id": jid, "fence": lease["fence"], "reason": "cancelled"}])

    def test_other_agents_heartbeats_stay_parked(self):
        a, b = self.agent("a"), self.agent("b")
        jid = self.submit()
        lease = a.lease()
        t, out = self.beat_in_thread(b, [], 2000)
        time.sleep(0.3)
        self.api.ok("POST", f"/v1/jobs/{jid}/cancel")
        t.join(30)
        status, reply, took = out["result"]
        self.assertEqual(reply["cancel"], [])
        self.assertGreaterEqual(took, 1.5)
        self.assertEqual(self.beat(a, [(jid, lease["fence"])], 0)[1]["cancel"][0]["reason"], "cancelled")

    def test_bad_wait(self):
        a = self.agent()
        status, reply = a.c.call("POST", f"/v1/agents/{a.id}/heartbeat", {"wait_ms": "soon"})
        self.assertEqual(status, 400)
        self.assertIn("wait_ms", reply["error"]["message"])

    def test_stopping_server_answers_parked_heartbeats(self):
        a = self.agent()
        t, out = self.beat_in_thread(a, [], 30000)
        time.sleep(0.5)  # let it park
        t0 = time.monotonic()
        self.assertEqual(self.server.stop(), 0)
        t.join(30)
        # A parked heartbeat does not hold the stop up for its wait (30 s);
        # it gets a 503 (or, if the server closed first, a closed connection).
        self.assertLess(time.monotonic() - t0, 15)
        if "result" in out:
            self.assertEqual(out["result"][0], 503)
        else:
            self.assertIsInstance(out["error"], (ConnectionError, OSError))



class ReleaseTest(Case):
    def test_released_job_is_queued_again_at_once(self):
        a, b = self.agent("a"), self.agent("b")
        jid = self.submit(retries=1)
        lease = a.lease()
        a.status(jid, lease["fence"])
        a.log(jid, lease["fence"], 0, "first attempt\n")
        reply = a.c.ok("POST", f"/v1/agents/{a.id}/release",
                       {"jobs": [{"id": jid, "fence": lease["fence"]}], "reason": "draining"})
        self.assertEqual(reply, {"released": [jid], "requeued": [jid], "lost": []})
        j = self.job(jid)
        self.assertEqual(j["state"], "queued")
        self.assertEqual(j["attempts"][0]["state"], "lost")
        self.assertIn("released by agent 'a': draining", j["attempts"][0]["message"])
        # The old holder is fenced out; the job runs again elsewhere.
        self.assertEqual(a.log(jid, lease["fence"], 14, "late\n")[0], 409)
        l2 = b.lease()
        self.assertEqual((l2["job"]["id"], l2["attempt"]), (jid, 2))
        self.assertEqual(b.complete(jid, l2["fence"])[0], 200)

    def test_release_all_after_a_restart(self):
        a = self.agent("a")
        j1, j2 = self.submit(name="one", retries=2), self.submit(name="two")
        l1, l2 = a.lease(), a.lease()
        a.status(j2, l2["fence"])
        # The agent crashed and came back: it hands back whatever it held.
        reply = a.c.ok("POST", f"/v1/agents/{a.id}/release", {"reason": "the agent restarted"})
        self.assertEqual(sorted(reply["released"]), sorted([j1, j2]))
        self.assertEqual(reply["requeued"], [j1])
        self.assertEqual(reply["lost"], [j2])
        # Started and out of retries: lost. Never started: its attempt is not counted.
        j = self.job(j2)
        self.assertEqual(j["state"], "lost")
        self.assertIn("released by agent 'a'", j["message"])
        j = self.job(j1)
        self.assertEqual((j["state"], j["max_attempts"]), ("queued", 4))
        self.assertIn("the attempt does not count", j["attempts"][0]["message"])
        # Its capacity is free again at once (not held as revoked).
        again = a.lease()
        self.assertEqual(again["job"]["id"], j1)
        self.assertEqual(a.c.ok("POST", f"/v1/agents/{a.id}/release", {})["released"], [j1])

    def test_unstarted_job_without_retries_is_not_lost(self):
        a = self.agent("a")
        jid = self.submit(name="never-started")
        lease = a.lease()
        reply = a.c.ok("POST", f"/v1/agents/{a.id}/release",
                       {"jobs": [{"id": jid, "fence": lease["fence"]}], "reason": "stopping"})
        self.assertEqual(reply["requeued"], [jid])
        self.assertEqual(self.job(jid)["state"], "queued")
        l2 = a.lease()
        self.assertEqual(l2["attempt"], 2)
        a.status(jid, l2["fence"])
        self.assertEqual(a.complete(jid, l2["fence"])[0], 200)

    def test_refunds_are_bounded(self):
        # An agent that keeps handing a job back unstarted cannot keep it
        # queued for ever: after 5 refunds the attempts count again.
        a = self.agent("a")
        jid = self.submit(name="bounced")
        for i in range(5):
            lease = a.lease()
            reply = a.c.ok("POST", f"/v1/agents/{a.id}/release",
                           {"jobs": [{"id": jid, "fence": lease["fence"]}]})
            self.assertEqual(reply["requeued"], [jid], i)
        lease = a.lease()
        reply = a.c.ok("POST", f"/v1/agents/{a.id}/release",
                       {"jobs": [{"id": jid, "fence": lease["fence"]}]})
        self.assertEqual(reply["lost"], [jid])
        self.assertEqual(self.job(jid)["state"], "lost")

    def test_stop_leasing_answers_parked_lease_requests(self):
        a = self.agent("a")
        client = self.server.client()
        self.addCleanup(client.close)
        out = {}

        def poll():
            out["status"] = client.call("POST", f"/v1/agents/{a.id}/lease", {"wait_ms": 20000})[0]
        t = threading.Thread(target=poll)
        t.start()
        self.addCleanup(t.join, 60)
        time.sleep(0.5)
        t0 = time.monotonic()
        reply = a.c.ok("POST", f"/v1/agents/{a.id}/release", {"jobs": [], "stop_leasing": True})
        self.assertEqual(reply["released"], [])
        t.join(30)
        self.assertLess(time.monotonic() - t0, WAKE_BOUND)
        self.assertEqual(out["status"], 204)
        # A job submitted now waits for a live request instead of going to the dead one.
        jid = self.submit()
        self.assertEqual(self.job(jid)["state"], "queued")

    def test_release_ignores_leases_of_others_and_stale_fences(self):
        a, b = self.agent("a"), self.agent("b")
        jid = self.submit(retries=1)
        lease = b.lease()
        reply = a.c.ok("POST", f"/v1/agents/{a.id}/release",
                       {"jobs": [{"id": jid, "fence": lease["fence"]}]})
        self.assertEqual(reply["released"], [])
        reply = b.c.ok("POST", f"/v1/agents/{b.id}/release",
                       {"jobs": [{"id": jid, "fence": lease["fence"] + 100}]})
        self.assertEqual(reply["released"], [])
        self.assertEqual(self.job(jid)["state"], "leased")

    def test_bad_requests(self):
        a = self.agent()
        status, reply = a.c.call("POST", f"/v1/agents/{a.id}/release", {"jobs": "all"})
        self.assertEqual(status, 400)
        status, reply = a.c.call("POST", f"/v1/agents/{a.id}/release", {"reason": "x" * 600})
        self.assertEqual(status, 400)
        status, reply = a.c.call("POST", "/v1/agents/999/release", {})
        self.assertEqual(status, 404)


class ParkedLeaseTest(Case):
    """A parked lease long-poll nobody will read gets no job: its client
    closed the connection (a killed agent), or its agent let a lease expire
    (a frozen or cut-off agent)."""
    server_args = ("--lease-ttl", "1s")

    def test_closed_connection_gets_no_job(self):
        import socket
        a = self.agent()
        body = b'{"wait_ms": 20000}'
        sock = socket.create_connection(("127.0.0.1", self.server.port))
        sock.sendall(b"POST /v1/agents/%d/lease HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (a.id, len(body), body))
        time.sleep(0.3)  # parked
        sock.close()     # the agent dies
        time.sleep(0.1)
        jid = self.submit()
        time.sleep(0.3)
        self.assertEqual(self.job(jid)["state"], "queued")
        lease = a.lease()
        self.assertEqual((lease["job"]["id"], lease["attempt"]), (jid, 1))

    def test_agent_whose_lease_expired_gets_no_job_from_its_parked_poll(self):
        a = self.agent()
        jid = self.submit(retries=1)
        l1 = a.lease()
        self.assertEqual(l1["job"]["id"], jid)
        client = self.server.client()
        self.addCleanup(client.close)
        out = {}

        def poll():
            out["status"] = client.call("POST", f"/v1/agents/{a.id}/lease",
                                        {"wait_ms": 20000})[0]
        t = threading.Thread(target=poll)
        t.start()
        self.addCleanup(t.join, 60)
        # No heartbeat: the lease expires (1 s) and the job is queued again;
        # the agent's parked poll is answered without it.
        t.join(30)
        self.assertEqual(out.get("status"), 204)
        # (the requeue is committed a moment after the in-memory decision)
        j = wait_for(lambda: (lambda j: j if j["state"] == "queued" else None)(self.job(jid)),
                     what="the job queued again")
        self.assertEqual(j["attempt"], 1)
        b = self.agent("b")
        self.assertEqual(b.lease()["attempt"], 2)


if __name__ == "__main__":
    kilntest.main()
