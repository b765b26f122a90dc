"""The kiln command line: help, version, dispatch, exit codes; kiln-init."""
import os
import signal
import subprocess
import time

import kilntest
from kilntest import run


class CliTest(kilntest.TempDirTestCase):
    def test_help_lists_commands(self):
        r = run(["--help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: kiln", r.stdout)
        self.assertIn("version", r.stdout)
        self.assertIn("exit codes", r.stdout)

    def test_no_command_is_usage_error(self):
        r = run([])
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage: kiln", r.stderr)

    def test_version(self):
        for args in (["--version"], ["version"]):
            r = run(args)
            self.assertEqual(r.returncode, 0, args)
            self.assertRegex(r.stdout, r"^kiln \d+\.\d+\.\d+\n$")

    def test_help_command(self):
        r = run(["help", "version"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: kiln version", r.stdout)
        r = run(["help", "nosuch"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown command 'nosuch'", r.stderr)

    def test_unknown_command_suggests(self):
        r = run(["versoin"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown command 'versoin' (did you mean 'version'?)", r.stderr)

    def test_bad_global_options(self):
        r = run(["--log-level", "loud", "version"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown log level 'loud'", r.stderr)
        r = run(["--frobnicate"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown option", r.stderr)


class InitTest(kilntest.TempDirTestCase):
    def init(self, *args, **kw):
        return run(list(args), binary=kilntest.KILN_INIT, **kw)

    def test_exit_code_passed_through(self):
        self.assertEqual(self.init("sh", "-c", "exit 7").returncode, 7)
        self.assertEqual(self.init("--", "true").returncode, 0)

    def test_killed_by_signal_is_128_plus(self):
        self.assertEqual(self.init("sh", "-c", "kill -9 $$").returncode, 128 + 9)

    def test_missing_command(self):
        r = self.init("/nonexistent/cmd")
        self.assertEqual(r.returncode, 127)
        self.assertIn("/nonexistent/cmd", r.stderr)
        self.assertEqual(self.init().returncode, 2)

    def test_forwards_sigterm(self):
        marker = os.path.join(self.tmp, "got-term")
        script = f"trap 'echo term > {marker}; exit 3' TERM; echo ready; while :; do sleep 0.05; done"
        p = subprocess.Popen([kilntest.KILN_INIT, "sh", "-c", script],
                             stdout=subprocess.PIPE, text=True)
        self.assertEqual(p.stdout.readline().strip(), "ready")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=10), 3)
        p.stdout.close()
        self.assertTrue(os.path.exists(marker))

    def test_reaps_orphans(self):
        # The child forks a grandchild that outlives it; init must reap it
        # (as a subreaper here) and still exit with the child's status.
        r = self.init("sh", "-c", "(sleep 0.2 &) ; exit 5", timeout=20)
        self.assertEqual(r.returncode, 5)


if __name__ == "__main__":
    kilntest.main()
