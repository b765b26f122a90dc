"""Helpers for kiln's black-box system tests.

Tests drive the built binaries as a user would. Paths come from the
environment meson sets (KILN, KILN_INIT, KILN_SRC), so a test can also be run
by hand: KILN=build/src/cli/kiln python3 tests/system/test_cli.py
"""
import os
import shutil
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("KILN_SRC", os.path.dirname(os.path.dirname(HERE)))
KILN = os.environ.get("KILN", os.path.join(SRC, "build", "src", "cli", "kiln"))
# The full kiln: the same as KILN where no front is built (decision 0025).
_CORE = os.path.join(os.path.dirname(KILN), "kiln-core")
KILN_CORE = os.environ.get("KILN_CORE_EXE", _CORE if os.path.exists(_CORE) else KILN)
KILN_INIT = os.environ.get("KILN_INIT", os.path.join(SRC, "build", "src", "init", "kiln-init"))


def run(args, *, input=None, timeout=60, env=None, cwd=None, binary=None):
    """Runs kiln (or `binary`) with args; returns CompletedProcess (text)."""
    cmd = [binary or KILN] + list(args)
    full_env = dict(os.environ)
    full_env.pop("KILN_ADDR", None)
    full_env.pop("KILN_TOKEN", None)
    full_env.pop("KILN_CORE", None)
    if env:
        full_env.update(env)
    return subprocess.run(cmd, input=input, capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def is_root():
    return os.geteuid() == 0


class TempDirTestCase(unittest.TestCase):
    """A test case with self.tmp, a fresh directory removed afterwards."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kiln-systest-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def write(self, name, text, mode=None):
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w" if isinstance(text, str) else "wb") as f:
            f.write(text)
        if mode is not None:
            os.chmod(path, mode)
        return path


def main():
    unittest.main(verbosity=2)
