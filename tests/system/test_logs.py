"""Job logs: fenced appends at offsets (retransmission idempotent, gaps
refused), reads from any offset, live follow (chunked and Server-Sent
Events) from the start and from the middle while the job writes, one log
per attempt, and the head+tail cap with its marker."""
import http.client
import json
import os
import threading
import time

import kilntest
from kilnapi import FakeAgent, Server, spec, wait_for


class LogCase(kilntest.TempDirTestCase):
    server_args = ()

    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"), self.server_args).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)
        self.agent = FakeAgent(self.server.addr, "a1")
        self.agent.register()
        self.addCleanup(self.agent.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def start_job(self, **kw):
        status, body = self.api.call("POST", "/v1/jobs", spec(**kw))
        self.assertEqual(status, 201, body)
        jid = body["jobs"][0]["id"]
        lease = self.agent.lease()
        self.assertEqual(lease["job"]["id"], jid)
        self.agent.status(jid, lease["fence"])
        return jid, lease["fence"]

    def read(self, jid, query=""):
        status, headers, data = self.api.raw("GET", f"/v1/jobs/{jid}/log{query}")
        self.assertEqual(status, 200, data)
        return data


class AppendTest(LogCase):
    def test_offsets_retransmission_and_gaps(self):
        jid, fence = self.start_job()
        a = self.agent
        self.assertEqual(a.log(jid, fence, 0, "hello "), (200, {"size": 6, "duplicate": False}))
        # The same chunk again (a retransmission): accepted, nothing written.
        self.assertEqual(a.log(jid, fence, 0, "hello "), (200, {"size": 6, "duplicate": True}))
        # Overlapping the end: only the new part is appended.
        self.assertEqual(a.log(jid, fence, 3, "lo world\n")[1]["size"], 12)
        # A gap is refused, with the size to resend from.
        status, body = a.log(jid, fence, 20, "later")
        self.assertEqual(status, 409)
        self.assertEqual(body["error"]["code"], "log_gap")
        self.assertEqual(body["error"]["size"], 12)
        self.assertEqual(self.read(jid), b"hello world\n")
        self.assertEqual(self.read(jid, "?offset=6"), b"world\n")
        self.assertEqual(self.read(jid, "?offset=99"), b"")
        # Bad parameters.
        status, _, _ = self.api.raw("POST", f"/v1/jobs/{jid}/log?fence={fence}", b"x")
        self.assertEqual(status, 400)
        status, _, _ = self.api.raw("POST", f"/v1/jobs/999/log?fence=1&offset=0", b"x")
        self.assertEqual(status, 404)

    def test_binary_bytes_are_kept_exactly(self):
        jid, fence = self.start_job()
        blob = bytes(range(256)) * 3
        self.assertEqual(self.agent.log(jid, fence, 0, blob)[0], 200)
        self.assertEqual(self.read(jid), blob)

    def test_one_log_per_attempt(self):
        status, body = self.api.call("POST", "/v1/jobs", spec(retries=1))
        jid = body["jobs"][0]["id"]
        l1 = self.agent.lease()
        self.agent.log(jid, l1["fence"], 0, "first attempt\n")
        self.agent.complete(jid, l1["fence"], "failed", 1)
        self.assertEqual(self.read(jid, "?attempt=1"), b"first attempt\n")
        status, _, _ = self.api.raw("GET", f"/v1/jobs/{jid}/log?attempt=2")
        self.assertEqual(status, 404)


class FollowTest(LogCase):
    def follow(self, jid, query, sse=False, out=None):
        """Reads a follow stream to its end in a thread; returns the thread."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        headers = {"Accept": "text/event-stream"} if sse else {}
        headers["Authorization"] = "Bearer " + self.server.token
        conn.request("GET", f"/v1/jobs/{jid}/log?follow=1{query}", headers=headers)
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        out["type"] = resp.getheader("Content-Type")

        def run():
            chunks = []
            while True:
                b = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not b:
                    break
                chunks.append(b)
                out["partial"] = b"".join(chunks)
            out["data"] = b"".join(chunks)
            conn.close()

        t = threading.Thread(target=run)
        t.start()
        return t

    def test_follow_from_start_and_middle_while_the_job_writes(self):
        jid, fence = self.start_job()
        a = self.agent
        lines = [f"line {i}\n".encode() for i in range(200)]
        off = 0
        for ln in lines[:50]:
            a.log(jid, fence, off, ln)
            off += len(ln)
        middle = off
        from_start, from_middle = {}, {}
        t1 = self.follow(jid, "&offset=0", out=from_start)
        t2 = self.follow(jid, f"&offset={middle}", out=from_middle)
        # Both followers see what is already there before more is written.
        wait_for(lambda: from_start.get("partial", b"").endswith(lines[49]), what="backlog")
        for ln in lines[50:]:
            a.log(jid, fence, off, ln)
            off += len(ln)
        wait_for(lambda: from_middle.get("partial", b"").endswith(lines[-1]), what="live lines")
        self.assertTrue(t1.is_alive() and t2.is_alive())  # still following
        a.complete(jid, fence)
        t1.join(30)
        t2.join(30)
        self.assertFalse(t1.is_alive() or t2.is_alive())
        self.assertEqual(from_start["data"], b"".join(lines))
        self.assertEqual(from_middle["data"], b"".join(lines)[middle:])
        self.assertTrue(from_start["type"].startswith("text/plain"))

    def test_follow_a_queued_job_waits_for_its_first_attempt(self):
        status, body = self.api.call("POST", "/v1/jobs", spec(name="later"))
        jid = body["jobs"][0]["id"]
        got = {}
        t = self.follow(jid, "", out=got)
        time.sleep(0.2)
        lease = self.agent.lease()
        self.agent.log(jid, lease["fence"], 0, "started\n")
        self.agent.complete(jid, lease["fence"])
        t.join(30)
        self.assertEqual(got["data"], b"started\n")

    def test_server_sent_events(self):
        jid, fence = self.start_job()
        self.agent.log(jid, fence, 0, "one\n")
        got = {}
        t = self.follow(jid, "", sse=True, out=got)
        wait_for(lambda: b"one" in got.get("partial", b""), what="first event")
        self.agent.log(jid, fence, 4, b"two \xe2\x82")  # a character split across chunks
        self.agent.log(jid, fence, 10, b"\xac\xff\n")
        self.agent.complete(jid, fence)
        t.join(30)
        self.assertEqual(got["type"], "text/event-stream")
        events = []
        for block in got["data"].decode().split("\n\n"):
            ev = {}
            for line in block.split("\n"):
                if ":" in line and not line.startswith(":"):
                    k, v = line.split(":", 1)
                    ev[k] = v.strip()
            if ev.get("event"):
                events.append(ev)
        logs = [json.loads(e["data"]) for e in events if e["event"] == "log"]
        text = "".join(x["text"] for x in logs)
        self.assertEqual(text, "one\ntwo \u20ac\ufffd\n")
        self.assertEqual(events[-1]["event"], "end")
        self.assertEqual(json.loads(events[-1]["data"])["state"], "ended")
        # ids are the next offsets: Last-Event-ID resumes after them.
        self.assertEqual(int(events[0]["id"]), 4)
        status, _, data = self.api.raw("GET", f"/v1/jobs/{jid}/log",
                                       headers={"Accept": "text/event-stream", "Last-Event-ID": "4"})
        self.assertIn(b'"offset":4', data)
        self.assertNotIn(b"one", data)


class CapTest(LogCase):
    server_args = ("--log-cap", "64Ki")

    def test_head_and_tail_are_kept_with_a_marker(self):
        jid, fence = self.start_job()
        total = 0
        chunk = b"".join(b"%07d\n" % i for i in range(2048))  # 16 KiB of numbered lines
        for _ in range(16):  # 256 KiB through a 64 KiB cap
            status, body = self.agent.log(jid, fence, total, chunk)
            self.assertEqual(status, 200, body)
            total += len(chunk)
        self.assertEqual(body["size"], total)  # offsets keep counting
        data = self.read(jid)
        head, _, rest = data.partition(b"\n[kiln: ")
        self.assertEqual(head, (chunk * 16)[:32 * 1024])
        marker, _, tail = rest.partition(b"]\n")
        self.assertIn(b"%d bytes of this log were dropped" % (total - 64 * 1024), marker)
        self.assertEqual(len(tail), 32 * 1024)
        self.assertEqual(tail, (chunk * 16)[-32 * 1024:])
        # The job goes on: appends still work and the end of the log moves.
        self.assertEqual(self.agent.log(jid, fence, total, b"last line\n")[0], 200)
        self.assertTrue(self.read(jid).endswith(b"last line\n"))
        self.assertEqual(self.agent.complete(jid, fence)[0], 200)
        # And after a restart the capped log reads the same.
        before = self.read(jid)
        self.stop_server()
        self.server.start()
        api = self.server.client()
        self.addCleanup(api.close)
        self.assertEqual(api.raw("GET", f"/v1/jobs/{jid}/log")[2], before)


if __name__ == "__main__":
    kilntest.main()
