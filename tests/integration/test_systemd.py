"""kaleidod under systemd, without systemd: the test is the service
manager.  It owns the notify socket and reads what a Type=notify unit
would send (READY=1, STATUS=, WATCHDOG=1 with WATCHDOG_USEC set), wedges
one thread serving clients for real (ptrace stops that one thread) to see
the pings stop, and checks `--check-config --quiet`, the ExecStartPre of
the units."""
import ctypes
import os
import socket
import tempfile
import time

import pytest

from harness import KALEIDOD, SRCDIR, Sdk, run_kaleidod, wait_for

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207


class Notify:
    """A private NOTIFY_SOCKET: every datagram kaleidod sends, in order."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kdn-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got = []

    def drain(self):
        """Everything queued now, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                self.got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def wait(self, pred, timeout=15.0, what="a message"):
        """The first message from now on that pred accepts."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s within %.0f s; got %r" % (what, timeout,
                                                                     self.got[-10:]))
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.got.append(msg)
            if pred(msg):
                return msg

    def close(self):
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def notify():
    n = Notify()
    yield n
    n.close()


def fields(msg):
    return dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)


def start_notified(daemon_factory, mock, notify, watchdog_usec=None, config=None):
    env = {"NOTIFY_SOCKET": notify.path}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    d = daemon_factory(mock, env=env, config=config)
    d.start(wait_ready=False)
    notify.wait(lambda m: "READY=1" in m.split("\n"), what="READY=1")
    # The harness waits for READY=1 on its own socket; this one is ours.
    wait_for(lambda: d.get("/_kaleidod/health").status == 200, what="health")
    return d


def test_ready_status_and_watchdog(daemon_factory, mock, notify):
    d = start_notified(daemon_factory, mock, notify, watchdog_usec=2000000)
    # Pings come about four times a WatchdogSec.
    for _ in range(3):
        notify.wait(lambda m: fields(m).get("WATCHDOG") == "1", what="WATCHDOG=1")
    s = Sdk(d.port)
    assert s.get("/programs").header("X-Cache") == "MISS"
    assert s.get("/programs").header("X-Cache") == "HIT"
    msg = notify.wait(lambda m: "of 2," in fields(m).get("STATUS", ""),
                      what="a STATUS= line counting both lookups")
    status = fields(msg)["STATUS"]
    assert status.startswith("auth ok, hit ratio 50.0% of 2,"), status
    assert "connections" in status and "entries" in status, status


def test_no_watchdog_pings_unless_asked(daemon_factory, mock, notify):
    d = start_notified(daemon_factory, mock, notify)
    Sdk(d.port).get("/programs")
    # A STATUS= line comes within a couple of seconds; by then, any ping
    # would have been sent before it.
    notify.wait(lambda m: "STATUS=auth ok" in m, what="STATUS=")
    notify.drain()
    assert not [m for m in notify.got if "WATCHDOG=1" in m], notify.got
    assert "systemd watchdog every" not in d.log()


def serve_threads(pid):
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            if f.read().strip().startswith("kd-serve-"):
                out.append(int(tid))
    return out


def test_a_wedged_front_stops_the_pings(daemon_factory, mock, notify):
    # WatchdogSec=4: pings every second; a thread stalled for 2.5 s (the
    # least kaleidod takes for a stall) withholds them.
    d = start_notified(daemon_factory, mock, notify, watchdog_usec=4000000,
                       config={"server": {"threads": "2"}})
    notify.wait(lambda m: "WATCHDOG=1" in m, what="WATCHDOG=1")
    tids = serve_threads(d.pid)
    assert len(tids) == 2, tids
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    victim = tids[1]
    if libc.ptrace(PTRACE_SEIZE, victim, None, None) != 0:
        pytest.skip("ptrace is not allowed here: %s" % os.strerror(ctypes.get_errno()))
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, victim, None, None) == 0
        # One thread of two stopped; the other still answers clients, yet
        # kaleidod must notice and stop feeding the watchdog.
        wait_for(lambda: "has not come round its loop" in d.log(), timeout=15,
                 what="kaleidod noticing the stalled thread")
        notify.drain()  # what was sent before it noticed
        before = len(notify.got)
        assert d.get("/_kaleidod/health").status == 200
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            notify.sock.settimeout(deadline - time.monotonic())
            try:
                notify.got.append(notify.sock.recv(4096).decode())
            except socket.timeout:
                break
        pings = [m for m in notify.got[before:] if "WATCHDOG=1" in m]
        assert not pings, pings
    finally:
        # Detaching needs the tracee stopped, which it is.
        os.waitpid(victim, os.WNOHANG | 0x40000000)  # __WALL: reap the stop report
        assert libc.ptrace(PTRACE_DETACH, victim, None, None) == 0
    notify.wait(lambda m: "WATCHDOG=1" in m, what="WATCHDOG=1 after the thread runs again")
    wait_for(lambda: "watchdog pings resumed" in d.log(), what="the log saying so")


def test_check_config_quiet(tmp_path):
    good = tmp_path / "good.conf"
    good.write_text("[server]\nlisten = 127.0.0.1:8765\n")
    p = run_kaleidod(["--check-config", "--quiet", "--config", str(good)])
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"" and p.stderr == b"", (p.stdout, p.stderr)
    # Without --quiet it prints the effective configuration.
    p = run_kaleidod(["--check-config", "--config", str(good)])
    assert p.returncode == 0 and b"[server]" in p.stdout, p
    bad = tmp_path / "bad.conf"
    bad.write_text("[server]\nlisten = 127.0.0.1:8765\nthreads = many\n")
    p = run_kaleidod(["--check-config", "--quiet", "--config", str(bad)])
    assert p.returncode != 0 and p.stdout == b"", p
    assert b"threads" in p.stderr, p.stderr
    p = run_kaleidod(["--quiet"])
    assert p.returncode != 0 and b"--quiet goes with --check-config" in p.stderr, p.stderr


def test_units_run_check_config_and_the_watchdog():
    """The units in the tree say what the daemon does: Type=notify, a
    watchdog, the configuration checked before the start."""
    for unit in ("systemd/kaleidod.service.in", "systemd/user/kaleidod.service.in"):
        with open(os.path.join(SRCDIR, unit)) as f:
            text = f.read()
        lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
        assert "Type=notify" in lines, unit
        assert any(ln.startswith("WatchdogSec=") for ln in lines), unit
        assert "ExecStartPre=@sbindir@/kaleidod --check-config --quiet $KALEIDOD_OPTS" in lines
        assert "ExecStart=@sbindir@/kaleidod $KALEIDOD_OPTS" in lines
    # The build writes the binary's own prefix into the unit it installs.
    built = os.path.join(os.path.dirname(os.path.dirname(KALEIDOD)), "systemd",
                         "kaleidod.service")
    with open(built) as f:
        text = f.read()
    assert "@sbindir@" not in text
    sbindir = [ln.split("=", 1)[1].split()[0] for ln in text.splitlines()
               if ln.startswith("ExecStart=")][0]
    assert sbindir.endswith("/sbin/kaleidod"), sbindir
