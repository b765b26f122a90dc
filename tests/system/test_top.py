"""kiln top, driven in tmux against a live `kiln up`: what the screen shows
(queue by org and labels, agents with slots, load and memory, running jobs
with elapsed time, CPU and memory), following a job's log live, cancel with
confirmation, the filter, a resize, and quitting. Plus its refusals (no
terminal, bad options) and GET /v1/overview, which it draws from."""
import json
import os
import re
import shutil
import subprocess
import time

import kilntest
import kilnup
from kilnapi import Client, wait_for

TMUX = shutil.which("tmux")


class Screen:
    """A tmux server of its own (socket in `sock`) with one session running
    one command; capture() returns the screen text."""

    def __init__(self, sock, cmd, width=160, height=48):
        self.tmux = [TMUX, "-S", sock, "-f", "/dev/null"]
        self.name = "top"
        env = dict(os.environ, TERM="xterm-256color")
        env.pop("TMUX", None)
        subprocess.run(self.tmux + ["new-session", "-d", "-s", self.name, "-x", str(width),
                                    "-y", str(height), cmd], check=True, env=env)
        # Keep the pane after the command exits, to tell an exit from a crash.
        subprocess.run(self.tmux + ["set-option", "-g", "remain-on-exit", "on"], check=True)
        subprocess.run(self.tmux + ["set-option", "-w", "-t", self.name, "remain-on-exit", "on"],
                       check=True)
        out = self.run("display-message", "-p", "-t", self.name, "#{pane_pid}").stdout.strip()
        self.pid = int(out) if out.isdigit() else None

    def run(self, *args):
        return subprocess.run(self.tmux + list(args), capture_output=True, text=True)

    def capture(self):
        return self.run("capture-pane", "-p", "-t", self.name).stdout

    def keys(self, *keys):
        self.run("send-keys", "-t", self.name, *keys)

    def resize(self, width, height):
        self.run("resize-window", "-t", self.name, "-x", str(width), "-y", str(height))

    def dead(self):
        """The command's exit status once it has exited ("signal N" if a
        signal killed it), else None. Read from /proc while the process is a
        zombie (tmux may reap it late), else from tmux."""
        if self.pid:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    return None
                code = int(fields[49])  # exit_code, field 52 of stat
                return code >> 8 if code & 0x7f == 0 else f"signal {code & 0x7f}"
            except (OSError, IndexError, ValueError):
                pass  # reaped: tmux knows
        out = self.run("display-message", "-p", "-t", self.name,
                       "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}").stdout.strip()
        dead, status, sig = (out.split(":") + ["", ""])[:3]
        if dead != "1" or not (status or sig):
            return None
        return int(status) if status else f"signal {sig}"

    def kill(self):
        self.run("kill-server")

    def wait_for(self, pred, timeout=30, what="the screen"):
        last = [""]

        def check():
            last[0] = self.capture()
            return pred(last[0])
        try:
            wait_for(check, timeout=timeout, interval=0.1, what=what)
            return last[0]
        except AssertionError:
            raise AssertionError(f"timed out waiting for {what}; the screen:\n{last[0]}")


def line_with(screen, text):
    for line in screen.splitlines():
        if text in line:
            return line
    return None


class TopTest(kilntest.TempDirTestCase):
    def setUp(self):
        reason = kilnup.skip_reason()
        if reason:
            self.skipTest(reason)
        if not TMUX:
            self.skipTest("tmux is not installed (Debian package tmux)")
        super().setUp()
        self.up = kilnup.Up(self.tmp, args=("--slots", "2", "--name", "box1")).start()
        self.addCleanup(self.up.stop)
        self.api = Client(self.up.addr)
        self.addCleanup(self.api.close)

    def submit(self, doc):
        status, body = self.api.call("POST", "/v1/jobs", json.dumps(doc))
        self.assertEqual(status, 201, body)
        return body["jobs"][0]["id"]

    def top(self, *args, width=160, height=48):
        sock = os.path.join(self.tmp, f"tmux-{len(os.listdir(self.tmp))}.sock")
        cmd = " ".join([kilntest.KILN, "top", "--server", self.up.addr, "--token",
                        self.up.token] + list(args))
        s = Screen(sock, cmd, width, height)
        self.addCleanup(s.kill)
        return s

    def test_the_screen_and_its_keys(self):
        ticker = self.submit({"name": "ticker", "steps": [
            {"run": "for i in $(seq 1 600); do echo tick-$i; sleep 0.1; done"}]})
        burner = self.submit({"name": "burner", "steps": [
            {"run": "python3 -c \"b = bytearray(48 << 20)\nwhile True: pass\""}]})
        stuck = self.submit({"name": "stuck", "runs-on": ["arm64", "nowhere"],
                             "steps": [{"run": "true"}]})
        waiting = self.submit({"name": "waiting", "steps": [{"run": "true"}]})
        wait_for(lambda: all(self.api.ok("GET", f"/v1/jobs/{j}")["state"] == "running"
                             for j in (ticker, burner)), timeout=60, what="two running jobs")

        s = self.top("--interval", "300ms")
        scr = s.wait_for(lambda t: "JOBS (4)" in t and "ticker" in t, what="the first frame")
        for text in ("kiln top", self.up.addr, "QUEUE by org and labels", "AGENTS", "box1",
                     "Jobs: 2 queued (1 unschedulable), 2 running", "Slots: 2/2 busy",
                     "[########] 2/2"):
            self.assertIn(text, scr)
        q = line_with(scr, "arm64,nowhere")
        self.assertIsNotNone(q, scr)
        self.assertRegex(q, r"default +arm64,nowhere +1 ")
        self.assertIn("no registered agent has all the labels", q)
        self.assertRegex(line_with(scr, f" {waiting} waiting "), rf"{waiting} +waiting +default +queued")
        self.assertRegex(line_with(scr, " ticker "), rf"{ticker} +ticker +default +running +box1")
        # The agent's heartbeat brings the load, the jobs' CPU and memory.
        scr = s.wait_for(lambda t: re.search(r"burner .* running .*box1 .*\d+(\.\d+)?s +\d+% .*Mi",
                                             t) is not None and
                         re.search(r"box1 +ready .* \d+\.\d\d \d+\.\d\d \d+\.\d\d", t),
                         timeout=45, what="CPU, memory and load from the heartbeat")
        self.assertRegex(line_with(scr, "burner"), r"(\d+(\.\d+)?[KMG]i)")

        # Enter on the first job (the ticker, running) follows its log live.
        s.keys("g", "Enter")
        scr = s.wait_for(lambda t: f"LOG of job {ticker} (attempt 1), following" in t and
                         "tick-" in t, what="the log panel")
        first = max(int(n) for n in re.findall(r"tick-(\d+)", scr))
        s.wait_for(lambda t: max(int(n) for n in re.findall(r"tick-(\d+)", t) or [0]) > first + 5,
                   what="new log lines")
        s.keys("Escape")
        s.wait_for(lambda t: "LOG of job" not in t, what="the log panel closed")

        # The filter narrows the jobs (and the queue) as it is typed.
        s.keys("/", "s", "t", "u", "c", "k", "Enter")
        scr = s.wait_for(lambda t: "JOBS (1)  filter: stuck" in t, what="the filter")
        self.assertNotIn("ticker", scr)
        # Cancel asks first; "n" keeps the job.
        s.keys("c")
        s.wait_for(lambda t: f"Cancel job {stuck} 'stuck'? (y/N)" in t, what="the confirmation")
        s.keys("n")
        s.wait_for(lambda t: "not cancelled" in t, what="the refusal")
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{stuck}")["state"], "queued")
        s.keys("c")
        s.wait_for(lambda t: "(y/N)" in t, what="the confirmation")
        s.keys("y")
        s.wait_for(lambda t: f"job {stuck} cancelled (it was queued)" in t, what="the cancel")
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{stuck}")["state"], "cancelled")
        s.wait_for(lambda t: "JOBS (0)  filter: stuck" in t, what="the job gone")
        s.keys("Escape")
        s.wait_for(lambda t: "JOBS (3)" in t and "filter:" not in t, what="the filter cleared")

        # A smaller window: redrawn to fit, nothing left over from the old size.
        s.resize(100, 24)
        scr = s.wait_for(lambda t: len(t.splitlines()[0]) <= 100 and "kiln top" in t and
                         "JOBS (3)" in t, what="the resized screen")
        self.assertLessEqual(max(len(line) for line in scr.splitlines()), 100)
        # The footer shows the keys again once the cancel's message has had its time.
        s.wait_for(lambda t: "q quit" in t.rstrip().splitlines()[-1], timeout=15,
                   what="the keys in the footer")

        s.keys("q")
        wait_for(lambda: s.dead() is not None, timeout=10, what="kiln top to exit")
        self.assertEqual(s.dead(), 0)
        # Quitting top changes nothing on the server.
        self.assertEqual(self.api.ok("GET", f"/v1/jobs/{ticker}")["state"], "running")
        for j in (ticker, burner, waiting):
            self.api.call("POST", f"/v1/jobs/{j}/cancel")

    def test_an_unreachable_server_is_shown_not_fatal(self):
        s = self.top("--interval", "200ms")
        s.wait_for(lambda t: "kiln top" in t and "box1" in t, what="the first frame")
        self.assertEqual(self.up.stop(), 0)
        s.wait_for(lambda t: "cannot refresh:" in t, what="the error line")
        s.keys("q")
        wait_for(lambda: s.dead() is not None, timeout=10, what="kiln top to exit")
        self.assertEqual(s.dead(), 0)


class TopRefusalsTest(kilntest.TempDirTestCase):
    def test_no_terminal_and_bad_options(self):
        r = kilntest.run(["top", "--server", "127.0.0.1:9"], input="")
        self.assertEqual(r.returncode, 1)
        self.assertIn("needs a terminal", r.stderr)
        r = kilntest.run(["top", "--interval", "5ms"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("--interval", r.stderr)
        r = kilntest.run(["top", "extra"])
        self.assertEqual(r.returncode, 2)


if __name__ == "__main__":
    kilntest.main()
