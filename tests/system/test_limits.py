"""Bad input at the HTTP level: slow clients (slowloris) are dropped at the
header and body deadlines, connections past the limit are refused while the
server stays up, idle keep-alive connections are closed, smuggling-shaped
requests and oversized headers are refused."""
import os
import socket
import time

import kilntest
from kilnapi import Server


def closed_within(sock, seconds, trickle=None):
    """Feeds `trickle` one byte at a time every 0.2 s (keeping the connection
    active) until the server closes it; returns the seconds it took, or None."""
    sock.settimeout(0.2)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        try:
            data = sock.recv(4096)
            if not data:
                return time.monotonic() - t0
            if data.startswith(b"HTTP/1.1 4"):
                return time.monotonic() - t0
        except socket.timeout:
            pass
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0
        if trickle:
            try:
                sock.send(trickle[i % len(trickle):i % len(trickle) + 1])
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - t0
            i += 1
    return None


class LimitsTest(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.server = Server(os.path.join(self.tmp, "state"),
                             ["--header-timeout", "1s", "--body-timeout", "1s",
                              "--idle-timeout", "2s", "--max-connections", "8"]).start()
        self.addCleanup(self.stop_server)

    def stop_server(self):
        if self.server.proc:
            self.assertEqual(self.server.stop(), 0, self.server.read_log()[-3000:])

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        self.addCleanup(s.close)
        return s

    def healthy(self):
        c = self.server.client()
        try:
            return c.ok("GET", "/healthz")["status"] == "ok"
        finally:
            c.close()

    def test_slow_headers_are_dropped(self):
        s = self.connect()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # A byte every 200 ms never lets the connection go idle; the header
        # deadline still ends it.
        took = closed_within(s, 10, trickle=b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
        self.assertIsNotNone(took, "a slowloris client was never dropped")
        self.assertLess(took, 5)
        self.assertTrue(self.healthy())

    def test_slow_body_is_dropped(self):
        s = self.connect()
        s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        took = closed_within(s, 10, trickle=b"{" * 1000)
        self.assertIsNotNone(took, "a slow body was never dropped")
        self.assertLess(took, 5)
        self.assertTrue(self.healthy())

    def test_idle_keep_alive_connection_is_closed(self):
        s = self.connect()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 200"))
        self.assertIsNotNone(closed_within(s, 10))

    def test_smuggling_shapes_and_huge_headers(self):
        s = self.connect()
        s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 400"))
        s = self.connect()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n")
        s.settimeout(5)
        try:
            data = s.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        self.assertFalse(data.startswith(b"HTTP/1.1 200"), data[:100])
        self.assertTrue(self.healthy())


class ConnectionLimitTest(LimitsTest):
    def setUp(self):
        kilntest.TempDirTestCase.setUp(self)
        self.server = Server(os.path.join(self.tmp, "state"),
                             ["--max-connections", "8", "--idle-timeout", "60s"]).start()
        self.addCleanup(self.stop_server)

    def test_connections_past_the_limit_are_refused(self):
        socks = [self.connect() for _ in range(20)]
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        served = 0
        for s in socks:
            try:
                s.settimeout(0.5)
                if s.recv(4096).startswith(b"HTTP/1.1 200"):
                    served += 1
            except OSError:
                pass
        self.assertGreater(served, 0)
        self.assertLessEqual(served, 8)
        for s in socks:
            s.close()
        # The server stays up and serves again once the crowd is gone.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.healthy():
                    break
            except OSError:
                time.sleep(0.1)
        self.assertTrue(self.healthy())

    # The other tests need the short timeouts of LimitsTest.
    test_slow_headers_are_dropped = None
    test_slow_body_is_dropped = None
    test_idle_keep_alive_connection_is_closed = None
    test_smuggling_shapes_and_huge_headers = None


if __name__ == "__main__":
    kilntest.main()
