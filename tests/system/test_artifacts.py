"""Artifacts: streaming fenced upload with sha256, size limit and path checks;
list and download; content-addressed storage (same bytes stored once)."""
import hashlib
import os
import socket

import kilntest
from kilnapi import FakeAgent, Server, spec


class ArtifactTest(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"), ("--artifact-max", "1Mi")).start()
        self.addCleanup(self.stop_server)
        self.api = self.server.client()
        self.addCleanup(self.api.close)
        self.agent = FakeAgent(self.server.addr, "a1")
        self.agent.register()
        self.addCleanup(self.agent.close)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def start_job(self):
        body = self.api.ok("POST", "/v1/jobs", spec())
        jid = body["jobs"][0]["id"]
        lease = self.agent.lease()
        return jid, lease["fence"]

    def blobs(self):
        root = os.path.join(self.server.state_dir, "artifacts", "blobs")
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)

    def test_upload_list_download(self):
        jid, fence = self.start_job()
        data = os.urandom(300 * 1024)
        digest = hashlib.sha256(data).hexdigest()
        status, body = self.agent.artifact(jid, fence, "dist/app.tar", data, sha256=digest)
        self.assertEqual(status, 201, body)
        self.assertEqual((body["sha256"], body["size"], body["path"]), (digest, len(data), "dist/app.tar"))
        self.agent.artifact(jid, fence, "report.txt", b"ok\n")
        arts = self.api.ok("GET", f"/v1/jobs/{jid}/artifacts")["artifacts"]
        self.assertEqual([a["path"] for a in arts], ["dist/app.tar", "report.txt"])
        self.assertEqual(arts[0]["attempt"], 1)
        status, headers, got = self.api.raw("GET", f"/v1/jobs/{jid}/artifacts/dist/app.tar")
        self.assertEqual(status, 200)
        self.assertEqual(got, data)
        self.assertEqual(headers["x-kiln-sha256"], digest)
        status, _, _ = self.api.raw("GET", f"/v1/jobs/{jid}/artifacts/nope.txt")
        self.assertEqual(status, 404)
        status, _, _ = self.api.raw("GET", "/v1/jobs/999/artifacts")
        self.assertEqual(status, 404)
        # Stored by content: the blob's name is its hash.
        self.assertIn(digest, [os.path.basename(p) for p in self.blobs()])
        self.assertEqual(self.agent.complete(jid, fence)[0], 200)
        # Downloads still work after the job ended.
        self.assertEqual(self.api.raw("GET", f"/v1/jobs/{jid}/artifacts/report.txt")[2], b"ok\n")

    def test_same_content_is_stored_once(self):
        jid, fence = self.start_job()
        for name in ("a.bin", "b.bin", "sub/c.bin"):
            self.assertEqual(self.agent.artifact(jid, fence, name, b"same bytes")[0], 201)
        self.assertEqual(len(self.blobs()), 1)

    def test_bad_paths_are_refused(self):
        jid, fence = self.start_job()
        for path in ("../escape", "a/../../escape", "a/./b", "a//b", "%2e%2e/escape",
                     "a/%2e%2e/%2e%2e/x", "a%5cb"):
            status, body = self.agent.artifact(jid, fence, path, b"x")
            self.assertEqual(status, 400, (path, body))
            self.assertEqual(body["error"]["code"], "bad_path", path)
        # An absolute path: the URL's "//" makes an empty component.
        status, body = self.agent.artifact(jid, fence, "/etc/passwd", b"x")
        self.assertEqual(status, 400)
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jid}/artifacts")["artifacts"], [])
        status, _, _ = self.api.raw("GET", f"/v1/jobs/{jid}/artifacts/%2e%2e/kiln.db")
        self.assertEqual(status, 400)

    def test_checksum_mismatch_and_size_limit(self):
        jid, fence = self.start_job()
        status, body = self.agent.artifact(jid, fence, "x.bin", b"abc", sha256="0" * 64)
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["code"], "sha256_mismatch")
        status, body = self.agent.artifact(jid, fence, "x.bin", b"abc", sha256="xyz")
        self.assertEqual(status, 400)
        tok = self.agent.job_tokens[(jid, fence)].encode()
        # Too large by its Content-Length: refused before any of it is sent.
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=20) as s:
            s.sendall(b"PUT /v1/jobs/%d/artifacts/big.bin?fence=%d HTTP/1.1\r\nHost: x\r\n"
                      b"Authorization: Bearer %s\r\n"
                      b"Content-Length: %d\r\n\r\n" % (jid, fence, tok, 2 << 20))
            data = s.recv(65536)
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:200])
        # Chunked upload past the limit: read and dropped, then refused.
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=20) as s:
            s.sendall(b"PUT /v1/jobs/%d/artifacts/c.bin?fence=%d HTTP/1.1\r\nHost: x\r\n"
                      b"Authorization: Bearer %s\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n" % (jid, fence, tok))
            chunk = b"c" * 65536
            for _ in range(24):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
            data = s.recv(65536)
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:200])
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{jid}/artifacts")["artifacts"], [])
        self.assertEqual(self.blobs(), [])
        self.assertEqual(os.listdir(os.path.join(self.server.state_dir, "artifacts", "tmp")), [])

    def test_fence_is_checked(self):
        jid, fence = self.start_job()
        status, body = self.agent.artifact(jid, fence + 100, "x", b"x")
        self.assertEqual(status, 409)
        status, _ = self.agent.artifact(jid, fence, "x", b"x")
        self.assertEqual(status, 201)
        self.agent.complete(jid, fence)
        status, body = self.agent.artifact(jid, fence, "late", b"x")
        self.assertEqual(status, 409)
        status, _ = self.api.call("PUT", f"/v1/jobs/{jid}/artifacts/x")
        self.assertEqual(status, 400)  # no fence at all


if __name__ == "__main__":
    kilntest.main()
