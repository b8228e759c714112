"""Helpers for kaleidod's integration tests: start the mock API and the
daemon (socket-activated, readiness through sd_notify), speak HTTP to them,
and wait for conditions with a deadline instead of sleeping.

Processes are stopped by their own PID only (SIGTERM, bounded wait, SIGKILL).

Two rules keep the suite true on a loaded machine (both cores busy, the
daemon under a sanitizer): prove an order, not a duration (a 504 that came
while the mock still held the request is kaleidod's own; no "took < N s");
and remember the cache's clock has whole seconds, so a 1 s entry lives
between 0 and 1 s: wait for its row (get_stored) and past() its own
expires_at instead of expecting a HIT right after the MISS.
"""

import hashlib
import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("KD_SRCDIR") or os.path.dirname(os.path.dirname(HERE))
BUILDDIR = os.environ.get("KD_BUILDDIR") or SRCDIR
PYTHON3 = os.environ.get("PYTHON3") or sys.executable
KALEIDOD = os.environ.get("KALEIDOD") or os.path.join(BUILDDIR, "daemon", "kaleidod")
MOCK = os.path.join(SRCDIR, "tests", "mock", "kaleidoscope_mock.py")

sys.path.insert(0, os.path.dirname(MOCK))
import kaleidoscope_mock as mockmod  # noqa: E402  (for the export pattern)

CLIENT_ID = "demo-client"
CLIENT_SECRET = "demo-secret-6f1c2a9e7b"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0


# ---------------------------------------------------------------- waiting
def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """Polls pred() until it returns something truthy; returns that value.
    Fails the test after timeout seconds, naming what was awaited and the
    last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)"
                                 % (timeout, what, last))
        time.sleep(interval)


# ---------------------------------------------------------------- HTTP
class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers      # list of (name, value), in order
        self.body = body

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        b = self.body[:300]
        return "<Response %d %r headers=%r body=%r%s>" % (
            self.status, self.reason, self.headers, b, "..." if len(self.body) > 300 else "")


def open_request(port, method, target, headers=(), body=None, timeout=HTTP_TIMEOUT,
                 host="127.0.0.1", chunked=False, source=None):
    """Sends one request with exactly the given headers (plus Host and
    Content-Length/Transfer-Encoding when not given) and returns
    (connection, http.client.HTTPResponse) with the body unread.  body may be
    bytes or an iterable of bytes; with an iterable and no Content-Length in
    headers, or chunked=True, it is sent chunked.  source: the client's own
    address (another loopback address is another client)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    names = {k.lower() for k, _ in headers}
    if "host" not in names:
        conn.putheader("Host", "%s:%d" % (host, port))
    for k, v in headers:
        conn.putheader(k, v)
    if body is not None and isinstance(body, (bytes, bytearray)) and not chunked:
        if "content-length" not in names:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body)
    elif body is not None:
        if isinstance(body, (bytes, bytearray)):
            body = [bytes(body)]
        if "content-length" not in names:
            chunked = True
            if "transfer-encoding" not in names:
                conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for piece in body:
            if not piece:
                continue
            if chunked:
                conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                conn.send(piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
    else:
        conn.endheaders()
    resp = conn.getresponse()
    return conn, resp


def request(port, method, target, headers=(), body=None, timeout=HTTP_TIMEOUT, **kw):
    """One request on a fresh connection; the whole answer as a Response."""
    conn, resp = open_request(port, method, target, headers, body, timeout, **kw)
    try:
        data = resp.read()
        return Response(resp.status, resp.reason, resp.getheaders(), data)
    finally:
        conn.close()


def raw_exchange(port, data, timeout=HTTP_TIMEOUT):
    """Sends raw request bytes and parses one answer (for header-level tests)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        resp = http.client.HTTPResponse(s, method=data.split(b" ", 1)[0].decode())
        resp.begin()
        body = resp.read()
        return Response(resp.status, resp.reason, resp.getheaders(), body)
    finally:
        s.close()


# ---------------------------------------------------------------- processes
def kill_process(proc):
    """SIGKILL, as a crash or the OOM killer would end it; reaps it."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(STOP_TIMEOUT)


def file_tail(path, n=40):
    """The last n lines of a log file, or "(no log)"."""
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop_process(proc, timeout=STOP_TIMEOUT):
    """SIGTERM this one process, wait, then SIGKILL.  Returns its exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def read_line(stream, timeout, proc=None):
    """One line from a pipe, within timeout seconds."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no line within %.1fs (got %r)" % (timeout, buf))
            if sel.select(min(left, 0.5)):
                d = os.read(fd, 4096)
                if not d:
                    raise AssertionError("pipe closed before a line (got %r)" % buf)
                buf += d
    finally:
        sel.close()
    return buf.split(b"\n", 1)[0].decode()


class Mock:
    """The mock API as its own process.  Control routes need no token."""

    def __init__(self, tmpdir, *args, client_id=CLIENT_ID, client_secret=CLIENT_SECRET):
        self.tmpdir = str(tmpdir)
        self.args = ["--client-id", client_id, "--client-secret", client_secret] + list(args)
        self.client_id = client_id
        self.client_secret = client_secret
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.tmpdir, "mock.%d.log" % id(self))

    def start(self):
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([PYTHON3, MOCK, "--port", "0"] + self.args,
                                     stdout=subprocess.PIPE, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        line = read_line(self.proc.stdout, START_TIMEOUT)
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc:
            stop_process(self.proc)
            self.proc.stdout.close()

    def call(self, method, path, obj=None):
        body = None if obj is None else json.dumps(obj).encode()
        hdrs = [("Content-Type", "application/json")] if body is not None else []
        r = request(self.port, method, path, hdrs, body)
        assert r.status == 200, "mock control %s %s -> %r" % (method, path, r)
        return r.json()

    def stats(self):
        return self.call("GET", "/_mock/stats")

    def count(self, key):
        """Requests the mock saw for "METHOD /path" (no query)."""
        return self.stats()["counts"].get(key, 0)

    def conditional(self, key):
        """Requests for "METHOD /path" that carried If-None-Match or
        If-Modified-Since."""
        return self.stats()["conditional"].get(key, 0)

    def not_modified(self, key):
        """304 answers the mock gave for "METHOD /path"."""
        return self.stats()["not_modified"].get(key, 0)

    def direct_get(self, target, headers=()):
        """GET straight from the mock with a fresh upstream token: what the
        API itself answers, to compare kaleidod's answers with."""
        return request(self.port, "GET", target,
                       [("Authorization", "Bearer " + self.grant())] + list(headers))

    def config(self, **kw):
        return self.call("POST", "/_mock/config", kw)

    def fault(self, path, kind, **kw):
        kw.update(path=path, kind=kind)
        return self.call("POST", "/_mock/fault", kw)

    def clear_faults(self):
        return self.call("DELETE", "/_mock/fault")

    def hold(self, path):
        return self.call("POST", "/_mock/hold", {"path": path})

    def release(self):
        return self.call("POST", "/_mock/release", {})

    def revoke(self, refresh=False):
        """Invalidates every access token issued so far (and refresh tokens)."""
        return self.call("POST", "/_mock/revoke", {"refresh": refresh})

    def requests(self, path=""):
        return self.call("GET", "/_mock/requests?path=" + urllib.parse.quote(path))

    def tokens(self):
        return self.call("GET", "/_mock/tokens")

    def grant(self):
        """A real upstream token, straight from the mock."""
        body = urllib.parse.urlencode({"grant_type": "client_credentials",
                                       "client_id": self.client_id,
                                       "client_secret": self.client_secret}).encode()
        r = request(self.port, "POST", "/auth/oauth/token",
                    [("Content-Type", "application/x-www-form-urlencoded")], body)
        assert r.status == 200, r
        return r.json()["access_token"]


def ini_text(sections):
    out = []
    for name, kv in sections.items():
        out.append("[%s]" % name)
        for k, v in kv.items():
            for one in (v if isinstance(v, list) else [v]):
                out.append("%s = %s" % (k, one))
        out.append("")
    return "\n".join(out)


def merge(base, extra):
    out = {k: dict(v) for k, v in base.items()}
    for sec, kv in (extra or {}).items():
        if kv is None:
            out.pop(sec, None)
            continue
        d = out.setdefault(sec, {})
        for k, v in kv.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
    return out


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KALEIDOSCOPE_", "LISTEN_", "NOTIFY_SOCKET", "CREDENTIALS_",
                                "STATE_DIRECTORY", "KD_TAP_FD", "PYTEST_"))}
    env.update(extra or {})
    return env


# Socket activation as systemd does it: the socket as fd 3, LISTEN_FDS=1 and
# LISTEN_PID naming the process that will exec kaleidod.  (A /bin/sh wrapper
# cannot do it: dash only knows single-digit descriptors.)
#
# Python ignores SIGPIPE and SIGXFSZ for itself, and a disposition of
# SIG_IGN survives exec: put them back to what a shell or systemd's
# defaults would give, so the daemon has to handle them itself.
ACTIVATE = """
import os, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class Daemon:
    """kaleidod under test: config file in tmpdir, secret in the environment,
    listening socket handed over as fd 3 (LISTEN_FDS), READY=1 awaited on a
    private NOTIFY_SOCKET, stderr kept in a log file."""

    def __init__(self, tmpdir, upstream_url, config=None, args=(), env=None,
                 secret=CLIENT_SECRET, client_id=CLIENT_ID, cache_file=None, name="kaleidod",
                 bind_addr="127.0.0.1", preexec_fn=None):
        self.tmpdir = str(tmpdir)
        self.cache_file = cache_file or os.path.join(self.tmpdir, "cache.db")
        base = {
            "upstream": {"url": upstream_url, "client_id": client_id,
                         "auth_retry_min": "1", "auth_retry_max": "2"},
            # Warm-up and refresh-ahead fetch the base lists on their own;
            # off here so that request counts at the mock are the client's.
            "cache": {"file": self.cache_file, "refresh_ahead": "no"},
            "log": {"level": "debug"},
        }
        self.sections = merge(base, config)
        self.args = list(args)
        self.secret = secret
        self.env_extra = dict(env or {})
        self.name = name
        self.bind_addr = bind_addr
        self.preexec_fn = preexec_fn    # run in the child before exec (rlimits)
        self.proc = None
        self.port = None
        self.starts = 0
        self.config_path = os.path.join(self.tmpdir, "%s.conf" % name)
        self.log_path = os.path.join(self.tmpdir, "%s.log" % name)

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(ini_text(self.sections))

    def start(self, wait_ready=True):
        if not os.access(KALEIDOD, os.X_OK):
            raise AssertionError("daemon binary %s missing (build first, or set KD_BUILDDIR)"
                                 % KALEIDOD)
        self.write_config()
        self.starts += 1
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind((self.bind_addr, 0))
        lsock.listen(128)
        self.port = lsock.getsockname()[1]
        ndir = tempfile.mkdtemp(prefix="kdn-", dir="/tmp")
        npath = os.path.join(ndir, "notify")
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        nsock.bind(npath)
        env = {"NOTIFY_SOCKET": npath}
        if self.secret is not None:
            env["KALEIDOSCOPE_API_CLIENT_SECRET"] = self.secret
        env.update(self.env_extra)
        fd = lsock.fileno()
        log = open(self.log_path, "ab")
        log.write(b"==== start %d ====\n" % self.starts)
        log.flush()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", "-c", ACTIVATE, str(fd), KALEIDOD,
                 "--config", self.config_path] + self.args,
                pass_fds=[fd], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=clean_env(env), preexec_fn=self.preexec_fn)
        finally:
            log.close()
            lsock.close()
        try:
            if wait_ready:
                self._wait_ready(nsock)
        finally:
            nsock.close()
            shutil.rmtree(ndir, ignore_errors=True)
        return self

    def _wait_ready(self, nsock):
        deadline = time.monotonic() + START_TIMEOUT
        got = []
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("kaleidod exited with %s before READY=1; log:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no READY=1 from kaleidod within %.0fs (got %r); log:\n%s"
                                     % (START_TIMEOUT, got, self.log_tail()))
            nsock.settimeout(min(left, 0.2))
            try:
                msg = nsock.recv(4096)
            except socket.timeout:
                continue
            got.append(msg)
            if b"READY=1" in msg.split(b"\n"):
                return

    def stop(self):
        """Stops this daemon; returns its exit code.  Raises if it had died
        on its own or by a signal other than the SIGTERM sent here."""
        if not self.proc:
            return None
        died_before = self.proc.poll()
        rc = stop_process(self.proc)
        self.proc = None
        if died_before is not None:
            raise AssertionError("kaleidod had exited on its own with %s; log:\n%s"
                                 % (died_before, self.log_tail()))
        if rc not in (0, -signal.SIGTERM):
            raise AssertionError("kaleidod exited with %s after SIGTERM; log:\n%s"
                                 % (rc, self.log_tail()))
        return rc

    def wait_exit(self, timeout=START_TIMEOUT):
        """For a daemon expected to quit on its own: its exit code."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("kaleidod still running after %.0fs; log:\n%s"
                                 % (timeout, self.log_tail()))
        self.proc = None
        return rc

    def restart(self):
        self.stop()
        return self.start()

    def kill(self):
        """SIGKILL, as a crash or the OOM killer would end it; reaps it."""
        if self.proc is not None:
            kill_process(self.proc)
            self.proc = None

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n=80):
        try:
            return "\n".join(self.log().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def request(self, method, target, headers=(), body=None, **kw):
        return request(self.port, method, target, headers, body, **kw)

    def get(self, target, headers=(), **kw):
        return request(self.port, "GET", target, headers, **kw)

    def health(self):
        r = self.get("/_kaleidod/health")
        assert r.status in (200, 503), r
        return r.json()

    def stats(self):
        r = self.get("/_kaleidod/stats")
        assert r.status == 200, r
        return r.json()

    def vm_hwm_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/%d/status" % self.proc.pid)


# ---------------------------------------------------------------- cache file
def sql(path, query, args=()):
    """Rows of one query on a cache file, from a separate connection (as any
    other process would read it; WAL lets it run beside the daemon)."""
    db = sqlite3.connect(path, timeout=10)
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


def sql_one(path, query, args=()):
    rows = sql(path, query, args)
    return rows[0][0] if rows else None


def row(d, path, column="count(*)"):
    """column of d's cache file row for path (no query), or None."""
    return sql_one(d.cache_file, "SELECT %s FROM entries WHERE path = ?" % column, (path,))


def get_stored(d, s, path):
    """GET path with Sdk s and wait until its answer is in the cache file.
    The row's expires_at is then the daemon's own (whole-second) expiry,
    which a test waits past with past(); a HIT right after a MISS only shows
    the entry was kept if the wall second did not turn in between."""
    r = s.get(path)
    assert r.status == 200, r
    wait_for(lambda: row(d, path), timeout=10, what="%s to be written to the file" % path)
    return r


def cache_warnings(daemon):
    """The daemon's warning and error lines that mention its cache."""
    return [line for line in daemon.log().splitlines()
            if (": warning: " in line or ": error: " in line) and "cache" in line.lower()]


def seconds_later(n):
    """Waits (bounded) until the wall clock is n whole seconds further on:
    with n = 2, at least one full second passes.  For ordering events that
    the cache stamps in whole seconds (possibly a maintenance tick late)."""
    start = int(time.time())
    wait_for(lambda: int(time.time()) >= start + n, timeout=n + 2, interval=0.01,
             what="%d seconds to pass" % n)


def run_kaleidod(args, env=None, timeout=15.0, config_text=None, tmpdir=None):
    """Runs kaleidod to completion (for --check-config, --version, errors)."""
    if not os.access(KALEIDOD, os.X_OK):
        raise AssertionError("daemon binary %s missing" % KALEIDOD)
    return subprocess.run([KALEIDOD] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=clean_env(env), timeout=timeout)


# ---------------------------------------------------------------- SDK-like client
class Sdk:
    """Behaves like kalpy (Authorization) or kalbio (X-Kal-Authorization):
    a token from POST /auth/oauth/token, then JSON requests with a bearer
    token, Content-Type: application/json, 10 s timeout."""

    def __init__(self, port, flavour="kalpy", client_id=CLIENT_ID, secret=CLIENT_SECRET,
                 extra_headers=()):
        self.port = port
        self.flavour = flavour
        self.client_id = client_id
        self.secret = secret
        self.extra = list(extra_headers)
        self.access_token = None
        self.refresh_token = None
        self.token_answer = None

    def auth(self):
        body = urllib.parse.urlencode({"grant_type": "client_credentials",
                                       "client_id": self.client_id,
                                       "client_secret": self.secret}).encode()
        r = request(self.port, "POST", "/auth/oauth/token",
                    [("Content-Type", "application/x-www-form-urlencoded")], body)
        assert r.status == 200, "local token request failed: %r" % r
        self.token_answer = r.json()
        self.access_token = self.token_answer["access_token"]
        self.refresh_token = self.token_answer.get("refresh_token")
        return self.token_answer

    def auth_headers(self):
        if self.access_token is None:
            self.auth()
        name = "Authorization" if self.flavour == "kalpy" else "X-Kal-Authorization"
        return [(name, "Bearer " + self.access_token)]

    def request(self, method, target, body=None, headers=()):
        hdrs = [("Content-Type", "application/json")] + self.auth_headers() + self.extra
        hdrs += list(headers)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        return request(self.port, method, target, hdrs, body)

    def get(self, target, headers=()):
        return self.request("GET", target, headers=headers)

    def post(self, target, body=None, headers=()):
        return self.request("POST", target, body if body is not None else {}, headers)

    def put(self, target, body=None, headers=()):
        return self.request("PUT", target, body if body is not None else {}, headers)


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


def export_md5(n):
    return mockmod.csv_bytes_md5(n)


# kaleidod's whole-second clock is time(2), which reads CLOCK_REALTIME_COARSE
# and can trail Python's time.time() by a scheduler tick (up to 10 ms): a
# test that waits for "the second after expires_at" waits a little longer.
CLOCK_SLACK = 0.05


def past(t):
    """Whether kaleidod's clock has certainly reached wall time t."""
    return time.time() >= t + CLOCK_SLACK
