"""Two gateways behind haproxy, configured as docs/cluster.md prints it.

The haproxy block is taken from the doc itself (the fenced block whose
first line is "# haproxy.cfg"); only the addresses, the CA file, the name
to verify and the check's timing are replaced, each by an exact string the
doc must still contain.  It runs under the real haproxy (Debian 12's 2.6;
a missing one fails the test: quickstart's test_deps installs it), in the
foreground, on a listening socket made here and handed over (bind fd@N),
in front of two kaleidod instances in one cluster (one redis-server on a
unix socket) that terminate TLS themselves, as the doc's gateways do.

Through haproxy: both servers pass the health check and each gets clients;
a write empties the family on both instances; an instance stopped is taken
out by the check and every request then goes to the other.  Nothing waits
on time: each wait is for state haproxy's stats socket or an instance shows.
"""

import csv
import http.client
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess

import pytest

from harness import HTTP_TIMEOUT, SRCDIR, Response, file_tail, stop_process, wait_for
from redisfix import RedisServer, socket_dir
from test_cluster import WAIT, instance
from test_tls import Pki

HAPROXY = os.environ.get("KD_HAPROXY") or shutil.which("haproxy") or "/usr/sbin/haproxy"
DOC = os.path.join(SRCDIR, "docs", "cluster.md")
BACKEND = "kaleidod"            # the doc's backend, and its servers
SERVERS = ("gw1", "gw2")
TARGET = "/programs"

# What the test puts in place of the doc's production values: each string
# must occur exactly once in the doc's block.
DOC_LISTEN = "bind 10.20.0.10:8765"
DOC_SERVER = "server %s 10.20.0.1%d:8765"       # gw1 .11, gw2 .12
DOC_CA = "ca-file /etc/haproxy/lab-ca.pem"
DOC_NAME = "verifyhost kaleidod.lab.example"
DOC_TIMING = "inter 2s fall 3 rise 2"
TEST_TIMING = "inter 200ms fall 2 rise 1"       # down in ~0.4 s, up at the first check

# haproxy's own sections for the test: a stats socket in the test's dir and
# the log on stderr instead of Debian's global (chroot, user, daemon), and
# Debian 12's defaults as shipped (less the error files), which the doc's
# block is appended to.
GLOBAL = """\
global
    stats socket {sock} mode 600 level admin
    log stderr format raw local0 info

defaults
    log global
    mode http
    option httplog
    option dontlognull
    timeout connect 5000
    timeout client 50000
    timeout server 50000

"""


# ---------------------------------------------------------------- the doc
def doc_block():
    """The haproxy configuration as docs/cluster.md prints it."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"^```[^\n]*\n(# haproxy\.cfg\b[^\n]*\n.*?)^```[ \t]*$", text, re.M | re.S)
    assert len(blocks) == 1, \
        "%s: expected one fenced block starting with '# haproxy.cfg', found %d" % (DOC, len(blocks))
    return blocks[0]


def substitute(block, pairs):
    for old, new in pairs:
        n = block.count(old)
        assert n == 1, ("docs/cluster.md's haproxy block has %r %d times (expected once): "
                        "update the doc or this test's substitutions\n%s" % (old, n, block))
        block = block.replace(old, new)
    return block


def need(path, what):
    if not os.access(path, os.X_OK):
        pytest.fail("%s (%s) is not installed: apt install %s (it is in quickstart's test_deps)"
                    % (what, path, what.split()[0]), pytrace=False)


# ---------------------------------------------------------------- haproxy
class Haproxy:
    """haproxy -db (foreground) on a listening socket made here, passed as
    an inherited descriptor; stopped by its PID."""

    def __init__(self, dirpath):
        self.dir = str(dirpath)
        self.cfg_path = os.path.join(self.dir, "haproxy.cfg")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.sock_dir = socket_dir("kdhaproxy-")
        self.sock_path = os.path.join(self.sock_dir, "haproxy.sock")
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.proc = None

    @property
    def fd(self):
        return self.lsock.fileno()

    def start(self, block):
        with open(self.cfg_path, "w") as f:
            f.write(GLOBAL.format(sock=self.sock_path) + block)
        p = subprocess.run([HAPROXY, "-c", "-f", self.cfg_path], pass_fds=[self.fd],
                           capture_output=True, timeout=30)
        assert p.returncode == 0, "haproxy -c refused the configuration:\n%s\n%s" % (
            (p.stdout + p.stderr).decode("utf-8", "replace"), open(self.cfg_path).read())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg_path],
                                         pass_fds=[self.fd], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        self.lsock.close()          # haproxy holds it now
        return self

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        self.lsock.close()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def command(self, line):
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError("haproxy exited with %s; log:\n%s"
                                 % (self.proc.returncode, self.log_tail()))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(self.sock_path)
            s.sendall(line.encode() + b"\n")
            out = b""
            while True:
                d = s.recv(65536)
                if not d:
                    return out.decode()
                out += d
        finally:
            s.close()

    def servers(self):
        """show stat for the backend's servers: {name: {column: value}}."""
        text = self.command("show stat")
        assert text.startswith("# "), text
        rows = csv.DictReader(io.StringIO(text[2:]))
        return {r["svname"]: r for r in rows
                if r["pxname"] == BACKEND and r["svname"] in SERVERS}

    def sessions(self):
        """Connections each server was given so far (checks are not counted)."""
        return {k: int(v["stot"]) for k, v in self.servers().items()}

    def log_tail(self, n=40):
        return file_tail(self.log_path, n)


# ---------------------------------------------------------------- HTTPS
class Tls:
    """The SDK's side over TLS: the lab's CA, the name in the certificate
    (localhost), any source address on loopback (another client)."""

    def __init__(self, ca):
        self.ctx = ssl.create_default_context(cafile=ca)
        self.token = None

    def request(self, port, method, target, body=None, source=None):
        conn = http.client.HTTPSConnection("localhost", port, timeout=HTTP_TIMEOUT,
                                           context=self.ctx,
                                           source_address=(source, 0) if source else None)
        headers = {"Content-Type": "application/json"}
        if self.token is not None:
            headers["Authorization"] = "Bearer " + self.token
        try:
            conn.request(method, target, body=body, headers=headers)
            r = conn.getresponse()
            return Response(r.status, r.reason, r.getheaders(), r.read())
        finally:
            conn.close()

    def login(self, port):
        conn = http.client.HTTPSConnection("localhost", port, timeout=HTTP_TIMEOUT,
                                           context=self.ctx)
        try:
            conn.request("POST", "/auth/oauth/token",
                         body="grant_type=client_credentials&client_id=x&client_secret=y",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (r.status, body)
        finally:
            conn.close()
        self.token = json.loads(body)["access_token"]

    def get(self, port, target=TARGET, source=None):
        r = self.request(port, "GET", target, source=source)
        assert r.status == 200, (port, target, source, r)
        return r

    def cluster(self, d):
        r = self.request(d.port, "GET", "/_kaleidod/stats")
        assert r.status == 200, r
        return r.json()["cluster"]


def xc(r):
    return r.header("X-Cache")


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def redis(request, tmp_path):
    r = RedisServer(tmp_path)
    request.node.kd_logs = getattr(request.node, "kd_logs", []) + [("redis", r.log_path)]
    yield r.start()
    r.close()


@pytest.fixture
def haproxy(request, tmp_path):
    need(HAPROXY, "haproxy")
    h = Haproxy(tmp_path)
    request.node.kd_logs = getattr(request.node, "kd_logs", []) + [("haproxy", h.log_path)]
    yield h
    h.stop()


@pytest.fixture
def pki(tmp_path):
    need(shutil.which("certtool") or "/usr/bin/certtool", "gnutls-bin (certtool)")
    return Pki(tmp_path / "pki")


# ---------------------------------------------------------------- tests
def test_the_documented_block_is_valid_as_printed(pki, tmp_path):
    """The doc's production values, with only the CA file made to exist,
    pass haproxy -c without a warning."""
    need(HAPROXY, "haproxy")
    cfg = tmp_path / "as-printed.cfg"
    # haproxy -c creates no socket; a short path, as haproxy allows 97 bytes
    cfg.write_text(GLOBAL.format(sock="/tmp/kdhaproxy-unused.sock")
                   + substitute(doc_block(), [(DOC_CA, "ca-file %s" % pki.ca)]))
    p = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode == 0 and "[WARNING]" not in out and "[ALERT]" not in out, out


def test_two_gateways_behind_the_documented_haproxy(redis, mock, daemon_factory, tmp_path,
                                                    haproxy, pki):
    cert, key = pki.issue("gateway")         # one certificate, shared, as the doc says
    tls = {"server": {"tls_cert": cert, "tls_key": key}}
    a = instance(daemon_factory, mock, tmp_path, "kdA", redis.spec, config=tls)
    b = instance(daemon_factory, mock, tmp_path, "kdB", redis.spec, config=tls)
    by_server = {"gw1": a, "gw2": b}
    c = Tls(pki.ca)
    for d in (a, b):
        wait_for(lambda: c.cluster(d)["state"] == "up", timeout=WAIT, interval=0.05,
                 what="%s's cluster state up" % d.name)

    haproxy.start(substitute(doc_block(), [
        (DOC_LISTEN, "bind fd@%d" % haproxy.fd),
        (DOC_SERVER % ("gw1", 1), "server gw1 127.0.0.1:%d" % a.port),
        (DOC_SERVER % ("gw2", 2), "server gw2 127.0.0.1:%d" % b.port),
        (DOC_CA, "ca-file %s" % pki.ca),
        (DOC_NAME, "verifyhost localhost"),
        (DOC_TIMING, TEST_TIMING),
    ]))
    hp = haproxy.port

    # (1) Both pass the health check (over TLS, verified), and clients are
    # spread over both: each client address keeps to one server.
    def both_checked():
        sv = haproxy.servers()
        return len(sv) == 2 and all(sv[s]["status"] == "UP" and sv[s]["check_status"] == "L7OK"
                                    for s in SERVERS) and sv
    wait_for(both_checked, timeout=WAIT, interval=0.05,
             what="both servers UP after a passed check (haproxy's log follows)")
    c.login(hp)
    home = {}                                  # client address -> server
    for i in range(2, 120):
        src = "127.0.0.%d" % i
        before = haproxy.sessions()
        c.get(hp, source=src)
        after = haproxy.sessions()
        moved = [s for s in SERVERS if after[s] != before[s]]
        assert len(moved) == 1, (src, before, after)
        home[src] = moved[0]
        if len(set(home.values())) == 2 and len(home) >= 8:
            break
    assert set(home.values()) == set(SERVERS), "balance source sent every client to one: %r" % home
    for src, s in list(home.items())[:4]:      # and again to the same one
        before = haproxy.sessions()
        c.get(hp, source=src)
        after = haproxy.sessions()
        assert after[s] == before[s] + 1, (src, s, before, after)

    # (2) A write through haproxy empties the family on both instances.
    for d in (a, b):
        c.get(d.port)
        assert xc(c.get(d.port)) == "HIT", d.name
    applied0 = {d.name: c.cluster(d)["applied"] for d in (a, b)}
    writer_src = next(iter(home))
    before = haproxy.sessions()
    r = c.request(hp, "POST", TARGET, body=b'{"x": 1}', source=writer_src)
    assert r.status == 200, r
    after = haproxy.sessions()
    writer = by_server[home[writer_src]]
    assert after[home[writer_src]] == before[home[writer_src]] + 1, (before, after)
    other = b if writer is a else a
    r = c.get(writer.port)
    assert xc(r) == "MISS", "the write did not empty %s itself: %r" % (writer.name, r)
    wait_for(lambda: c.cluster(other)["applied"] > applied0[other.name], timeout=WAIT,
             interval=0.05, what="%s to apply %s's write" % (other.name, writer.name))
    r = c.get(other.port)
    assert xc(r) == "MISS", "%s still served its copy after the write: %r" % (other.name, r)

    # (3) One stops: the check takes it out and the other answers everything.
    down, up = ("gw1", "gw2")
    by_server[down].stop()
    wait_for(lambda: haproxy.servers()[down]["status"] == "DOWN", timeout=WAIT, interval=0.05,
             what="haproxy to mark %s DOWN (haproxy's log follows)" % down)
    assert haproxy.servers()[up]["status"] == "UP"
    before = haproxy.sessions()
    clients = {s: [src for src in home if home[src] == s] for s in SERVERS}
    for i in range(20):                       # its own clients and the other's, in turn
        mine = clients[(down, up)[i % 2]]
        r = c.get(hp, source=mine[(i // 2) % len(mine)])
        assert r.status == 200, r
    after = haproxy.sessions()
    assert after[up] == before[up] + 20 and after[down] == before[down], (before, after)
    assert c.cluster(by_server[up])["state"] == "up"
