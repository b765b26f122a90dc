"""`kiln sandbox run`: what a job inside must not be able to do, limits,
accounting and teardown. Runs as root (and, for the rootless variants, as an
unprivileged user via setpriv); skips with a printed reason otherwise.

Every test uses its own state dir and the class its own cgroup parent
(/kiln-test-PID), so other kiln processes on the machine cannot disturb the
"nothing left behind" comparisons, which look only at what kiln owns.
"""
import contextlib
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import kilntest
from kilntest import run

CGROUP_ROOT = "/sys/fs/cgroup"
X86_64 = platform.machine() == "x86_64"


def cgroup_mounts():
    """Mount points of cgroup hierarchies under /sys/fs/cgroup."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split()[0]
            mnt = left.split()[4]
            if fstype in ("cgroup", "cgroup2") and mnt.startswith(CGROUP_ROOT):
                out.append(mnt)
    return out


def tree(path):
    """Sorted relative paths of the directories under path (cgroup trees)."""
    found = []
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            found.append(os.path.relpath(os.path.join(dirpath, d), path))
    return sorted(found)


def state_entries(state):
    """Entries of a state dir besides its journal and the cached /etc mask."""
    if not os.path.isdir(state):
        return []
    return sorted(e for e in os.listdir(state)
                  if not e.startswith(".etc-mask-") and e != "sandboxes")


def live_slots(state):
    """Sandbox records in the state dir's journal (4 KiB slots)."""
    try:
        with open(os.path.join(state, "sandboxes"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    return sum(1 for i in range(0, len(data), 4096) if data[i:i + 1] not in (b"", b"\0"))


def pids_with(marker):
    """Host pids whose command line contains marker."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(p))
        except OSError:
            pass
    return found


def wait_gone(marker, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pids_with(marker):
            return True
        time.sleep(0.05)
    return False


def remove_cgroup_parent(parent):
    """Removes a test class's (empty) cgroup parent from every hierarchy."""
    for m in cgroup_mounts():
        for _ in range(50):
            try:
                os.rmdir(m + parent)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def probe():
    """Why sandboxes cannot run here, or None."""
    if not kilntest.is_root():
        return "needs root"
    r = run(["sandbox", "probe", "-o", "json"], timeout=60)
    if r.returncode != 0:
        return "kiln sandbox probe failed: " + (r.stdout + r.stderr).strip()
    return None


SKIP = probe()


@unittest.skipIf(SKIP, SKIP or "")
class SandboxTest(kilntest.TempDirTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cg_parent = f"/kiln-test-{os.getpid()}"

    @classmethod
    def tearDownClass(cls):
        remove_cgroup_parent(cls.cg_parent)

    def setUp(self):
        super().setUp()
        self.state = os.path.join(self.tmp, "state")
        self.ws = os.path.join(self.tmp, "ws")
        os.makedirs(self.ws)

    def sbx(self, cmd, *opts, timeout=120, check_json=True, **kw):
        """Runs `kiln sandbox run OPTS -o json -- CMD`; returns (proc, result, output)."""
        args = ["sandbox", "run", "--state-dir", self.state,
                "--cgroup-parent", self.cg_parent, "-o", "json", *opts, "--", *cmd]
        r = run(args, timeout=timeout, **kw)
        lines = r.stdout.splitlines()
        result = None
        if lines and lines[-1].startswith("{"):
            result = json.loads(lines[-1])
            lines = lines[:-1]
        if check_json:
            self.assertIsNotNone(result, f"no result: rc={r.returncode} stderr={r.stderr}")
        return r, result, "\n".join(lines) + ("\n" if lines else "")

    def py(self, code, *opts, **kw):
        return self.sbx(["python3", "-c", code], *opts, **kw)

    # ---- basics --------------------------------------------------------------

    def test_exit_status_output_and_result(self):
        r, res, out = self.sbx(["sh", "-c", "echo out; echo err >&2; exit 3"])
        self.assertEqual(r.returncode, 3)
        self.assertEqual(out, "out\n")
        self.assertEqual(r.stderr, "err\n")
        self.assertEqual(res["exit_code"], 3)
        self.assertIsNone(res["signal"])
        self.assertFalse(res["oom_killed"])
        self.assertFalse(res["timed_out"])
        for k in ("wall_ms", "cpu_user_ms", "cpu_system_ms", "memory_peak_bytes",
                  "pids_peak", "io_read_bytes", "io_write_bytes"):
            self.assertIn(k, res)
        self.assertGreater(res["memory_peak_bytes"], 0)
        self.assertGreaterEqual(res["pids_peak"], 2)  # kiln-init + sh
        self.assertFalse(res["rootless"])
        self.assertNotEqual(res["cgroup"], "none")

    def test_trace_marks_every_phase(self):
        # KILN_SANDBOX_TRACE: the phases of create (both sides), exec and
        # destroy on stderr, times increasing; without it, nothing.
        r, res, out = self.sbx(["true"], env={"KILN_SANDBOX_TRACE": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        marks = {}
        for line in r.stderr.splitlines():
            self.assertTrue(line.startswith(f"sandbox-trace id={res['id']} op="), line)
            f = line.split()
            op, t, who, name = f[2][3:], float(f[3]), f[5], " ".join(f[6:])
            self.assertGreaterEqual(t, marks.get(op, [(0.0, "", "")])[-1][0], line)
            marks.setdefault(op, []).append((t, who, name))
        create = [(w, n) for _, w, n in marks["create"]]
        for want in [("parent", "clone3"), ("child", "started"), ("child", "pivot_root"),
                     ("child", "install seccomp filter"), ("parent", "READY received")]:
            self.assertIn(want, create)
        self.assertEqual(create[-1], ("parent", "READY received"))
        self.assertEqual(marks["exec"][-1][2], "reply received")
        self.assertEqual(marks["destroy"][-1][2], "state entry removed")
        r, _, _ = self.sbx(["true"])
        self.assertEqual(r.stderr, "")

    def test_killed_by_signal(self):
        r, res, _ = self.sbx(["sh", "-c", "kill -9 $$"])
        self.assertEqual(r.returncode, 137)
        self.assertEqual(res["signal"], "SIGKILL")
        self.assertFalse(res["oom_killed"])  # not guessed from SIGKILL

    def test_not_found_and_setup_errors(self):
        r, _, _ = self.sbx(["no-such-cmd-kiln"], check_json=False)
        self.assertEqual(r.returncode, 127)
        self.assertIn("command not found", r.stderr)
        r, _, _ = self.sbx(["true"], "--rootfs", "/nonexistent-kiln", check_json=False)
        self.assertEqual(r.returncode, 125)
        self.assertIn("rootfs '/nonexistent-kiln'", r.stderr)
        # A failure inside the new namespaces names the step.
        rootfs = os.path.join(self.tmp, "badroot")
        os.makedirs(rootfs)
        with open(os.path.join(rootfs, "proc"), "w") as f:
            f.write("not a directory\n")
        r, _, _ = self.sbx(["true"], "--rootfs", rootfs, check_json=False)
        self.assertEqual(r.returncode, 125)
        self.assertIn("sandbox set-up failed at 'mount /proc'", r.stderr)

    def test_usage_errors(self):
        for opts, msg in ((["--memory", "lots"], "--memory 'lots'"),
                          (["--cpus", "0"], "--cpus '0'"),
                          (["--net", "bridge"], "--net 'bridge'"),
                          (["--bind", "/tmp"], "expected SRC:DST"),
                          (["--timeout", "5"], "--timeout '5'")):
            r = run(["sandbox", "run", *opts, "--", "true"])
            self.assertEqual(r.returncode, 2, opts)
            self.assertIn(msg, r.stderr)
        r = run(["sandbox", "run"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("no command given", r.stderr)

    # ---- what a job must not be able to do -------------------------------------

    def test_cannot_see_host_processes(self):
        marker = f"kiln-host-marker-{os.getpid()}"
        host = subprocess.Popen([marker, "60"], executable="/bin/sleep")
        self.addCleanup(host.wait)
        self.addCleanup(host.kill)
        r, res, out = self.sbx(["sh", "-c", "for p in /proc/[0-9]*; do cat $p/cmdline | tr '\\0' ' '; echo; done"])
        self.assertEqual(r.returncode, 0)
        self.assertTrue(pids_with(marker))
        self.assertNotIn(marker, out)
        self.assertIn("kiln-init --control", out)
        # Only kiln-init, sh and the cat/tr of the loop exist.
        self.assertLessEqual(len([l for l in out.splitlines() if l.strip()]), 4)

    def test_cannot_write_outside_workspace_and_upper(self):
        ro = os.path.join(self.tmp, "ro")
        os.makedirs(ro)
        marker = f"kiln-marker-{os.getpid()}"
        script = f"""
import os
def tryw(p):
    try:
        with open(p, "w") as f: f.write("x")
        return "ok"
    except OSError as e:
        return e.strerror
print("usr", tryw("/usr/{marker}"))
print("etc", tryw("/etc/{marker}"))
print("ro", tryw("/ro/{marker}"))
print("ws", tryw("/workspace/{marker}"))
"""
        r, _, out = self.py(script, "--workspace", self.ws, "--bind", f"{ro}:/ro:ro")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = dict(l.split(" ", 1) for l in out.splitlines())
        self.assertEqual(lines["usr"], "ok")  # into the throw-away upper layer
        self.assertEqual(lines["etc"], "ok")
        self.assertEqual(lines["ro"], "Read-only file system")
        self.assertEqual(lines["ws"], "ok")
        self.assertFalse(os.path.exists(f"/usr/{marker}"))
        self.assertFalse(os.path.exists(f"/etc/{marker}"))
        self.assertEqual(os.listdir(ro), [])
        st = os.stat(os.path.join(self.ws, marker))
        self.assertEqual((st.st_uid, st.st_gid), (0, 0))  # idmapped: root inside = owner outside

    def test_cannot_read_unbound_host_files(self):
        secret = f"/root/kiln-test-{os.getpid()}"
        with open(secret, "w") as f:
            f.write("secret\n")
        self.addCleanup(os.unlink, secret)
        r, _, out = self.sbx(["sh", "-c", f"cat {secret} /etc/shadow /etc/gshadow 2>&1; ls -A /root /home; ls /etc/ssh 2>&1; echo done"])
        self.assertNotIn("secret", out)
        self.assertNotRegex(out, r"(?m)^root:")
        self.assertIn("/etc/shadow: No such file", out)
        self.assertIn("/etc/ssh", out)
        self.assertTrue(out.rstrip().endswith("done"))
        # /etc is otherwise the host's (users, hosts, ld.so.cache).
        r, _, out = self.sbx(["sh", "-c", "grep -c ^root: /etc/passwd"])
        self.assertEqual(out.strip(), "1")

    @unittest.skipUnless(X86_64, "syscall numbers are x86_64")
    def test_cannot_mount_load_modules_or_use_dangerous_syscalls(self):
        script = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *a):
    r = libc.syscall(nr, *a)
    print(name, r, os.strerror(ctypes.get_errno()) if r < 0 else "-")
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
r = libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)
print("mount", r, os.strerror(ctypes.get_errno()))
sc("init_module", 175, 0, 0, 0)
sc("finit_module", 313, 0, 0, 0)
sc("delete_module", 176, 0, 0)
sc("kexec_load", 246, 0, 0, 0, 0)
sc("keyctl", 250, 0, 0)
sc("add_key", 248, 0, 0, 0, 0, 0)
sc("bpf", 321, 0, 0, 0)
sc("perf_event_open", 298, 0, 0, 0, 0, 0)
sc("userfaultfd", 323, 0)
sc("io_uring_setup", 425, 1, 0)
sc("unshare", 272, 0x10000000)
sc("open_by_handle_at", 304, 0, 0, 0)
"""
        r, _, out = self.py(script)
        self.assertEqual(r.returncode, 0, r.stderr)
        res = dict((l.split(" ", 1)[0], l.split(" ", 2)[1:]) for l in out.splitlines())
        for name, (ret, err) in res.items():
            self.assertEqual(ret, "-1", name)
            self.assertEqual(err, "Operation not permitted", name)
        self.assertEqual(len(res), 13)

    def test_cannot_reach_kiln_init_or_its_fds(self):
        script = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(16, 1, 0, 0)   # PTRACE_ATTACH to kiln-init
print("ptrace", r, os.strerror(ctypes.get_errno()))
for p in ("/proc/1/fd/3", "/proc/1/exe", "/proc/1/environ", "/proc/1/mem"):
    try:
        os.close(os.open(p, os.O_RDONLY)); print(p, "opened")
    except OSError as e:
        print(p, e.strerror)
try:
    os.close(os.open("/proc/1/exe", os.O_WRONLY)); print("exe-write opened")
except OSError as e:
    print("exe-write", e.strerror)
print("fds", sorted(int(f) for f in os.listdir("/proc/self/fd")))
"""
        r, _, out = self.py(script)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("opened", out)
        self.assertIn("ptrace -1 Operation not permitted", out)
        # 0, 1, 2 and the fd listdir itself uses.
        self.assertIn("fds [0, 1, 2, 3]", out)

    def test_no_host_fd_inside(self):
        # kiln gets a host directory fd (not CLOEXEC) that it must not pass on,
        # and the job tries to use it as its cwd (CVE-2024-21626).
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, fd)
        args = ["sandbox", "run", "--state-dir", self.state, "--cgroup-parent", self.cg_parent,
                "--", "sh", "-c", "ls /proc/self/fd | tr '\\n' ' '"]
        p = subprocess.run([kilntest.KILN] + args, pass_fds=(fd,), capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.split(), ["0", "1", "2", "3"])
        for n in (fd, 3, 4, 5):
            p = subprocess.run([kilntest.KILN] + args[:5] + ["--cwd", f"/proc/self/fd/{n}", "--", "ls", "/etc/hostname", "../../../etc/shadow"],
                               pass_fds=(fd,), capture_output=True, text=True, timeout=60)
            self.assertNotEqual(p.returncode, 0)
            self.assertNotIn("shadow", p.stdout)

    def test_net_none_only_loopback(self):
        script = """
import socket
print("ifaces", [n for _, n in socket.if_nameindex()])
for addr in (("1.1.1.1", 80), ("10.0.0.1", 80), ("192.168.1.1", 80)):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(addr); print(addr[0], "connected")
    except OSError as e:
        print(addr[0], e.strerror)
    s.close()
srv = socket.socket(); srv.bind(("127.0.0.1", 80)); srv.listen()  # low ports allowed
c = socket.create_connection(srv.getsockname(), timeout=5)
a, _ = srv.accept(); c.sendall(b"ping"); print("loopback", a.recv(4).decode())
"""
        r, _, out = self.py(script)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ifaces ['lo']", out)
        self.assertNotIn("connected", out)
        self.assertIn("1.1.1.1 Network is unreachable", out)
        self.assertIn("loopback ping", out)
        # The network cannot be reconfigured from inside.
        r, _, out = self.sbx(["sh", "-c", "ip link add kt0 type dummy 2>&1; ip addr add 10.9.9.9/24 dev lo 2>&1; echo rc=$?"])
        self.assertIn("Operation not permitted", out)
        self.assertNotIn("rc=0", out)

    def test_net_host_shares_interfaces(self):
        host = sorted(n for _, n in socket.if_nameindex())
        r, _, out = self.py("import socket; print(sorted(n for _, n in socket.if_nameindex()))",
                            "--net", "host")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(out.strip(), str(host))

    def test_cannot_write_cgroups(self):
        r, _, out = self.sbx(["sh", "-c", "ls /sys/fs/cgroup 2>&1; cat /proc/self/cgroup; "
                              "mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>&1; echo rc=$?"])
        self.assertIn("No such file", out)
        self.assertIn("0::/\n", out)  # cgroup namespace: its own cgroup is the root
        self.assertNotIn("rc=0", out)

    def test_setuid_binary_gains_nothing(self):
        # A root-owned setuid copy of id in the workspace (idmapped: owned by
        # root inside too): run as uid 1000 it must still report 1000.
        shutil.copy("/usr/bin/id", os.path.join(self.ws, "id"))
        os.chmod(os.path.join(self.ws, "id"), 0o4755)
        r, _, out = self.sbx(["sh", "-c", "/workspace/id -u; grep CapEff /proc/self/status"],
                             "--workspace", self.ws, "--user", "1000")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = out.split("\n")
        self.assertEqual(lines[0], "1000")
        self.assertIn("0000000000000000", lines[1])

    def test_realtime_policy_not_inherited(self):
        if not shutil.which("chrt"):
            self.skipTest("needs chrt (util-linux)")
        args = [kilntest.KILN, "sandbox", "run", "--state-dir", self.state, "--cgroup-parent",
                self.cg_parent, "--cpus", "1", "--", "sh", "-c", "chrt -p $$"]
        p = subprocess.run(["chrt", "-f", "10"] + args, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("SCHED_OTHER", p.stdout)

    # ---- limits and accounting ------------------------------------------------------

    def test_fork_bomb_stops_at_pids_limit(self):
        t0 = time.monotonic()
        r, res, _ = self.sbx(["sh", "-c", "b() { b | b & }; b; sleep 60"], "--pids", "64",
                             "--timeout", "3s", timeout=120)
        self.assertTrue(res["timed_out"])
        self.assertEqual(r.returncode, 124)
        self.assertLessEqual(res["pids_peak"], 64)
        self.assertGreaterEqual(res["pids_peak"], 32)
        # The host stayed responsive: a process starts and finishes at once.
        t1 = time.monotonic()
        subprocess.run(["true"], check=True, timeout=10)
        self.assertLess(time.monotonic() - t1, 5)
        self.assertLess(time.monotonic() - t0, 60)

    def test_memory_bomb_is_oom(self):
        r, res, out = self.py("x = bytearray(512 << 20); print('survived')", "--memory", "64Mi")
        self.assertNotIn("survived", out)
        self.assertTrue(res["oom_killed"])
        self.assertEqual(res["signal"], "SIGKILL")
        self.assertGreaterEqual(res["oom_kills"], 1)
        self.assertEqual(r.returncode, 137)
        self.assertLessEqual(res["memory_peak_bytes"], 64 << 20)

    def test_cpu_limit(self):
        # Busy for 1 s of wall time with half a CPU allowed: at most ~0.5 s
        # of CPU (plus a CFS period of slack), whatever the machine's load.
        r, res, _ = self.sbx(["sh", "-c", "timeout 1 sh -c 'while :; do :; done'; true"],
                             "--cpus", "0.5")
        self.assertEqual(r.returncode, 0)
        self.assertLess(res["cpu_user_ms"] + res["cpu_system_ms"], 700)

    def test_disk_limit_bounds_writable_layer(self):
        r, res, out = self.sbx(["sh", "-c", "dd if=/dev/zero of=/tmp/big bs=1M count=32 2>&1; "
                                "dd if=/dev/zero of=/usr/big bs=1M count=32 2>&1 | tail -1"],
                               "--disk", "8Mi")
        self.assertIn("No space left on device", out)
        self.assertEqual(res["warnings"], [])
        # The workspace is the host's directory: the limit does not reach it,
        # and the result says so rather than leave it to be found out.
        ws = os.path.join(self.tmp, "disk-ws")
        os.makedirs(ws)
        r, res, out = self.sbx(["sh", "-c", "dd if=/dev/zero of=/workspace/big bs=1M count=16 "
                                "2>/dev/null; wc -c < /workspace/big"],
                               "--disk", "8Mi", "--workspace", ws)
        self.assertEqual((r.returncode, out.strip()), (0, str(16 << 20)), r.stderr)
        self.assertEqual(len(res["warnings"]), 1, res["warnings"])
        self.assertIn("not the workspace", res["warnings"][0])

    def test_timeout_kills_everything(self):
        marker = f"kiln-timeout-{os.getpid()}"
        r, res, _ = self.sbx(["sh", "-c", f"setsid sh -c 'sleep 300; : {marker}' & "
                              f"nohup sh -c 'sleep 300; : {marker}' >/dev/null 2>&1 & sleep 300"],
                             "--timeout", "1s")
        self.assertEqual(r.returncode, 124)
        self.assertTrue(res["timed_out"])
        self.assertEqual(pids_with(marker), [])

    def test_setsid_daemons_do_not_survive(self):
        marker = f"kiln-daemon-{os.getpid()}"
        r, res, _ = self.sbx(["sh", "-c", f"setsid sh -c 'sleep 300; : {marker}' & "
                              f"(setsid sh -c 'sleep 300; : {marker}' &) ; exit 0"])
        self.assertEqual(r.returncode, 0)
        self.assertEqual(pids_with(marker), [])

    def test_keep_keeps_upper_layer(self):
        r, res, _ = self.sbx(["sh", "-c", "echo kept > /usr/kept-file"], "--keep")
        self.assertEqual(r.returncode, 0, r.stderr)
        upper = res["upper_dir"]
        self.assertTrue(upper.startswith(self.state))
        with open(os.path.join(upper, "usr", "kept-file")) as f:
            self.assertEqual(f.read(), "kept\n")
        # A later run's cleanup leaves kept layers alone.
        self.sbx(["true"])
        self.assertTrue(os.path.exists(upper))

    def test_concurrent_sandboxes_get_their_own_host_ids(self):
        # Each live sandbox maps root to a slice of 65536 host ids of its
        # own, so per-user kernel limits (inotify instances, RLIMIT_NPROC)
        # are not shared between sandboxes.
        for f in ("/etc/subuid", "/etc/subgid"):
            if os.path.exists(f):
                with open(f) as fh:
                    for line in fh:
                        p = line.strip().split(":")
                        if p[0] == "kiln" and len(p) == 3 and int(p[2]) < 2 * 65536:
                            self.skipTest(f"{f} gives kiln fewer than two slices of ids")
        procs, marks = [], ["7001.25", "7001.5", "7001.75"]
        for m in marks:
            procs.append(subprocess.Popen(
                [kilntest.KILN, "sandbox", "run", "--state-dir", self.state,
                 "--cgroup-parent", self.cg_parent, "--", "sh", "-c",
                 f"cat /proc/self/uid_map; exec sleep {m}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        try:
            maps = [p.stdout.readline().split() for p in procs]
            uids = []
            for m in marks:
                deadline = time.monotonic() + 30
                while not pids_with(f"sleep\0{m}") and time.monotonic() < deadline:
                    time.sleep(0.05)
                (pid,) = pids_with(f"sleep\0{m}")
                with open(f"/proc/{pid}/status") as f:
                    uids.append(int(next(l for l in f if l.startswith("Uid:")).split()[1]))
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=60)
        for (inside, outside, count), uid in zip(maps, uids):
            self.assertEqual((inside, count), ("0", "65536"))
            self.assertEqual(int(outside), uid)
        self.assertEqual(len(set(uids)), 3, uids)
        for u in uids:
            self.assertEqual((u - uids[0]) % 65536, 0)
            self.assertGreaterEqual(u, 100000000)

    def make_rootfs(self):
        busybox = shutil.which("busybox")
        if not busybox:
            self.skipTest("needs busybox (busybox-static) for a rootfs")
        rootfs = os.path.join(self.tmp, "rootfs")
        os.makedirs(os.path.join(rootfs, "bin"))
        os.makedirs(os.path.join(rootfs, "etc"))
        shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
        for c in ("sh", "ls", "cat", "echo", "id", "stat"):
            os.symlink("busybox", os.path.join(rootfs, "bin", c))
        return rootfs

    def test_rootfs_directory(self):
        rootfs = self.make_rootfs()
        with open(os.path.join(rootfs, "etc", "os-release"), "w") as f:
            f.write("ID=kiln-test\n")
        r, _, out = self.sbx(["sh", "-c", "cat /etc/os-release; id -u; echo new > /etc/new; "
                              "ls /usr 2>&1; stat -c %u /bin/busybox"],
                             "--rootfs", rootfs)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = out.split("\n")
        self.assertEqual(lines[0], "ID=kiln-test")
        self.assertEqual(lines[1], "0")
        self.assertIn("No such file", lines[2])  # not the host's /usr
        self.assertEqual(lines[3], "0")  # idmapped lower: host root is root inside
        self.assertFalse(os.path.exists(os.path.join(rootfs, "etc", "new")))

    def test_rootfs_symlinks_cannot_redirect_mounts(self):
        rootfs = self.make_rootfs()
        outside = tempfile.mkdtemp(prefix="kiln-outside-", dir="/var/tmp")
        self.addCleanup(shutil.rmtree, outside, ignore_errors=True)
        # An absolute symlink: resolved inside the root, never on the host.
        os.symlink("/etc", os.path.join(rootfs, "data"))
        r, _, out = self.sbx(["sh", "-c", "ls /data/sub; ls /etc/sub"], "--rootfs", rootfs,
                             "--bind", f"{self.ws}:/data/sub:ro")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists("/etc/sub"))
        # Relative climbing out of the root: clamped to the root, which then
        # lacks the target: set-up fails closed, nothing is written outside.
        os.symlink("../../../../../../../.." + outside, os.path.join(rootfs, "tmp"))
        r, _, _ = self.sbx(["sh", "-c", "echo x > /tmp/t"], "--rootfs", rootfs,
                           check_json=False)
        self.assertEqual(r.returncode, 125)
        self.assertIn("mount /tmp", r.stderr)
        self.assertEqual(os.listdir(outside), [])
        # A target that resolves to the root itself is refused.
        os.unlink(os.path.join(rootfs, "tmp"))
        os.symlink("/", os.path.join(rootfs, "workspace"))
        r, _, _ = self.sbx(["true"], "--rootfs", rootfs, "--workspace", self.ws,
                           check_json=False)
        self.assertEqual(r.returncode, 125)
        self.assertIn("resolves to /", r.stderr)

    # ---- teardown ------------------------------------------------------------------

    def kiln_state(self):
        """What kiln owns: its state dir, its cgroup subtrees, mounts under its dirs."""
        cg = {m: tree(m + self.cg_parent) for m in cgroup_mounts()
              if os.path.isdir(m + self.cg_parent)}
        with open("/proc/self/mountinfo") as f:
            mounts = [l for l in f if self.state in l or self.cg_parent in l]
        return state_entries(self.state), live_slots(self.state), cg, mounts

    def test_100_runs_leave_nothing_behind(self):
        self.sbx(["true"])  # creates the cgroup parents and state dir once
        before = self.kiln_state()
        self.assertEqual(before[:2], ([], 0))
        for _ in range(100):
            r, _, _ = self.sbx(["sh", "-c", "sleep 5 & exit 0"], "--memory", "64Mi",
                               "--pids", "32", "--workspace", self.ws)
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.kiln_state(), before)

    def test_sigkilled_kiln_leaves_nothing_after_next_start(self):
        marker = f"kiln-orphan-{os.getpid()}"
        args = ["sandbox", "run", "--state-dir", self.state, "--cgroup-parent", self.cg_parent,
                "--memory", "64Mi", "--", "sh", "-c",
                f"setsid sh -c 'sleep 300; : {marker}' & echo ready; sleep 300; : {marker}"]
        p = subprocess.Popen([kilntest.KILN] + args, stdout=subprocess.PIPE, text=True)
        self.assertEqual(p.stdout.readline().strip(), "ready")
        self.assertTrue(pids_with(marker))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        # kiln-init sees its control socket close and takes everything down.
        self.assertTrue(wait_gone(marker), "processes survived their kiln")
        self.assertEqual(live_slots(self.state), 1)  # the dead run's record
        # The next start removes the leftover entry and its cgroups.
        r, _, _ = self.sbx(["true"])
        self.assertEqual(r.returncode, 0)
        entries, slots, cg, mounts = self.kiln_state()
        self.assertEqual(entries, [])
        self.assertEqual(slots, 0)
        self.assertEqual(mounts, [])
        for m, sub in cg.items():
            self.assertEqual(sub, [], m)


def unprivileged_user():
    """A uid/gid to run rootless tests as, or None."""
    for name in ("kilntest", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            pass
    return None


def rootless_skip():
    if SKIP:
        return SKIP
    if not shutil.which("setpriv"):
        return "needs setpriv (util-linux)"
    if not unprivileged_user():
        return "no unprivileged user"
    path = os.path.realpath(kilntest.KILN)
    while path != "/":
        if not os.stat(path).st_mode & 0o001:
            return f"{path} is not searchable by an unprivileged user"
        path = os.path.dirname(path)
    return None


ROOTLESS_SKIP = rootless_skip()


@unittest.skipIf(ROOTLESS_SKIP, ROOTLESS_SKIP or "")
class RootlessSandboxTest(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.uid, self.gid = unprivileged_user()
        os.chmod(self.tmp, 0o755)
        self.state = os.path.join(self.tmp, "state")
        os.makedirs(self.state)
        os.chown(self.state, self.uid, self.gid)

    def sbx(self, cmd, *opts):
        args = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                kilntest.KILN, "sandbox", "run", "--state-dir", self.state, "-o", "json",
                *opts, "--", *cmd]
        env = dict(os.environ)
        env.pop("XDG_RUNTIME_DIR", None)
        r = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        lines = r.stdout.splitlines()
        res = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        return r, res, "\n".join(lines[:-1] if res else lines)

    def test_runs_with_single_id_map(self):
        r, res, out = self.sbx(["sh", "-c", "id -u; cat /proc/self/uid_map; ls /proc | grep -c '^[0-9]'"])
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = out.split("\n")
        self.assertEqual(lines[0], "0")
        self.assertEqual(lines[1].split(), ["0", str(self.uid), "1"])
        self.assertLessEqual(int(lines[2]), 4)  # no host processes
        self.assertTrue(res["rootless"])
        if res["cgroup"] == "none":
            self.assertTrue(res["warnings"] and "no cgroup" in res["warnings"][0])
            self.assertIsNone(res["memory_peak_bytes"])
        self.assertEqual(state_entries(self.state), [])
        self.assertEqual(live_slots(self.state), 0)

    def test_cannot_mount_or_escape(self):
        r, _, out = self.sbx(["sh", "-c", "mount -t tmpfs none /mnt 2>&1; echo rc=$?; "
                              "cat /etc/shadow 2>&1; ls /proc/1/fd/ >/dev/null; "
                              "cat /proc/1/environ 2>&1 | head -c 40; echo"])
        self.assertNotIn("rc=0", out)
        self.assertNotRegex(out, r"(?m)^root:")

    def test_limits_without_cgroup_are_refused(self):
        r, res, _ = self.sbx(["true"])
        if res and res["cgroup"] != "none":
            self.skipTest("this host delegates a cgroup to the user")
        r, _, _ = self.sbx(["true"], "--memory", "64Mi")
        self.assertEqual(r.returncode, 125)
        self.assertIn("limits need a writable cgroup", r.stderr)

    @contextlib.contextmanager
    def user_server(self, *opts, state_dir=None, env=None):
        """A `kiln sandbox serve OPTS` of the test's user, ready; yields the
        command prefix `setpriv ... kiln sandbox` for that user."""
        user = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                kilntest.KILN, "sandbox"]
        state = ["--state-dir", state_dir] if state_dir else []
        srv = subprocess.Popen(user + ["serve", *state, *opts], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while subprocess.run(user + ["status", "--wait", "30s", *state], env=env,
                                 capture_output=True).returncode != 0:
                self.assertIsNone(srv.poll(), "kiln sandbox serve exited")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
            yield user
        finally:
            srv.terminate()
            self.assertEqual(srv.wait(timeout=60), 0, srv.stderr.read())
            srv.stderr.close()

    def test_served_by_a_rootless_server_in_the_default_state_dir(self):
        # Both ends find $XDG_RUNTIME_DIR/kiln/sandbox by themselves (the
        # front computes the socket's path, the server checks it is its own).
        xdg = os.path.join(self.tmp, "xdg")
        os.makedirs(xdg, mode=0o700)
        os.chown(xdg, self.uid, self.gid)
        env = dict(os.environ, XDG_RUNTIME_DIR=xdg)
        with self.user_server("--warm", "1", env=env) as user:
            # With a front, the full kiln must not even be needed.
            run_env = env if kilntest.KILN_CORE == kilntest.KILN else \
                dict(env, KILN_CORE="/nonexistent-kiln-core")
            r = subprocess.run(user + ["run", "-o", "json", "--", "sh", "-c", "id -u"],
                               env=run_env, capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            out, res = r.stdout.splitlines()
            res = json.loads(res)
            self.assertEqual(out, "0")
            self.assertTrue(res["served"] and res["warm"] and res["rootless"])
            # A workspace: a rootless server cannot add it to a made sandbox,
            # so it makes one with it.
            ws = os.path.join(self.tmp, "ws")
            os.makedirs(ws)
            os.chown(ws, self.uid, self.gid)
            r = subprocess.run(user + ["run", "-o", "json", "--workspace", ws, "--", "sh", "-c",
                                       "pwd; touch made"], env=run_env, capture_output=True,
                               text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            out, res = r.stdout.splitlines()
            res = json.loads(res)
            self.assertEqual(out, "/workspace")
            self.assertTrue(res["served"] and not res["warm"], res)
            self.assertEqual(os.stat(os.path.join(ws, "made")).st_uid, self.uid)
        self.assertFalse(os.path.exists(os.path.join(xdg, "kiln", "sandbox", "serve.sock")))

    def test_a_server_refuses_another_users_runs(self):
        # A rootless server: root can reach its socket, but nothing of root's
        # is run there; the full kiln says why.
        with self.user_server("--warm", "0", state_dir=self.state):
            r = run(["sandbox", "run", "--state-dir", self.state, "--", "true"])
            self.assertEqual(r.returncode, 125, r.stderr)
            self.assertIn(f"refused: the server runs as uid {self.uid}, the client as 0",
                          r.stderr)

    def test_timeout_and_teardown(self):
        marker = f"kiln-rootless-{os.getpid()}"
        r, res, _ = self.sbx(["sh", "-c", f"setsid sh -c 'sleep 300; : {marker}' & sleep 300"],
                             "--timeout", "1s")
        self.assertEqual(r.returncode, 124)
        self.assertTrue(res["timed_out"])
        self.assertEqual(pids_with(marker), [])
        self.assertEqual(state_entries(self.state), [])
        self.assertEqual(live_slots(self.state), 0)


if __name__ == "__main__":
    kilntest.main()
