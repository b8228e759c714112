"""Many client connections on one server thread: N idle keep-alive clients
that all send a request in one batch (N around libmicrohttpd's epoll batch
of 128 and its multiples) all get their answers, and a further client its
cache hit; when the N close together the daemon closes its ends at once (no
socket left in CLOSE-WAIT) and its descriptors return to where they were.
1000 idle and 200 byte-at-a-time clients do not hold up a normal one.  Past
[server] max_connections a client's request is answered 503 JSON with
Retry-After and its connection closed, and a new client is served again as
soon as a slot frees.

Every bound here is a "did it answer at all" bound of seconds; nothing is
timed.  The daemon is paused (SIGSTOP) while a batch of clients sends or
closes, so that it finds all their events waiting at once, as it would on a
loaded machine where its thread does not get a core at once."""

import contextlib
import os
import resource
import selectors
import signal
import socket
import time

import pytest

from harness import Response, request, wait_for

ANSWER_TIMEOUT = 20.0  # the bug made answers wait for a connection timeout (60 s)
SETTLE_TIMEOUT = 10.0  # closing clients: gone in milliseconds; the bug kept them 60 s
FD_SPARE = 100  # descriptors besides client connections, here or in the daemon
SERVER = {"threads": "1", "max_connections": "2000"}
TCP_ESTABLISHED = 0x01
TCP_CLOSE_WAIT = 0x08


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def fd_limit():
    """Raises the soft limit on open files to the hard one (the daemon,
    started from here, inherits it): a connection costs a descriptor here
    and one in the daemon."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def need_fds(nconn):
    """Skips the test where nconn client connections would not fit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < nconn + FD_SPARE:
        pytest.skip("RLIMIT_NOFILE hard limit %d is too low for %d connections" % (soft, nconn))


# ---------------------------------------------------------------- raw clients
def get_bytes(port, target="/programs"):
    return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (target, port)).encode()


class Conn:
    """One client connection held open by the test.  Requests are written
    raw; answers are parsed from a buffer here, so that hundreds of
    connections can be read at once with a selector."""

    def __init__(self, port, timeout=ANSWER_TIMEOUT):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def get(self, target="/programs"):
        self.send(get_bytes(self.port, target))

    def close(self):
        self.sock.close()

    def feed(self):
        """One recv() into the buffer; notes EOF (a reset counts as one)."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    def answer(self):
        """Takes one whole answer off the buffer: a Response, or None while
        it is not all there."""
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0].startswith("HTTP/1."), "not a status line: %r" % self.buf[:200]
        headers = [(k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:])]
        resp = Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, b"")
        if "chunked" in (resp.header("Transfer-Encoding") or "").lower():
            body, pos = b"", 0
            while True:
                line_end = rest.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(rest[pos:line_end].split(b";")[0], 16)
                if size == 0:
                    end = rest.find(b"\r\n\r\n", line_end)
                    if end < 0:
                        return None
                    rest = rest[end + 4:]
                    break
                if len(rest) < line_end + 2 + size + 2:
                    return None
                body += rest[line_end + 2:line_end + 2 + size]
                pos = line_end + 2 + size + 2
        elif resp.header("Content-Length") is not None:
            n = int(resp.header("Content-Length"))
            if len(rest) < n:
                return None
            body, rest = rest[:n], rest[n:]
        elif self.eof:
            body, rest = rest, b""
        else:
            return None
        resp.body = body
        self.buf = rest
        return resp

    def read_answer(self, timeout=ANSWER_TIMEOUT):
        """The next whole answer, within timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            resp = self.answer()
            if resp is not None:
                return resp
            if self.eof:
                raise ConnectionError("closed before a whole answer (got %r)" % self.buf[:300])
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no whole answer within %.1fs (got %r)"
                                     % (timeout, self.buf[:300]))
            self.sock.settimeout(left)
            self.feed()

    def closed_by_server(self, timeout=ANSWER_TIMEOUT):
        """True once the server has closed this connection (EOF after any
        answers already read), within timeout seconds; False if it is
        still open then."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                self.feed()
            except socket.timeout:
                return False
        return True


def read_answers(conns, timeout=ANSWER_TIMEOUT):
    """One answer from each connection, read side by side: a list of
    Response, or of the reason there was none within timeout seconds."""
    out = [None] * len(conns)
    sel = selectors.DefaultSelector()
    try:
        for i, c in enumerate(conns):
            c.sock.setblocking(False)
            sel.register(c.sock, selectors.EVENT_READ, i)
        deadline = time.monotonic() + timeout
        waiting = len(conns)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 0.5)):
                c = conns[key.data]
                try:
                    c.feed()
                except BlockingIOError:
                    continue
                resp = c.answer()
                if resp is None and not c.eof:
                    continue
                out[key.data] = resp or "closed before an answer (got %r)" % c.buf[:200]
                sel.unregister(c.sock)
                waiting -= 1
    finally:
        sel.close()
        for c in conns:
            c.sock.settimeout(timeout)
    return [r if r is not None else "no answer within %.1fs" % timeout for r in out]


def not_hits(answers):
    """The answers that are not a 200 HIT, as (index, what) pairs."""
    bad = []
    for i, r in enumerate(answers):
        if not isinstance(r, Response):
            bad.append((i, r))
        elif (r.status, r.header("X-Cache")) != (200, "HIT"):
            bad.append((i, r))
    return bad


def open_idle(port, n):
    """n keep-alive connections, each having done one GET /programs (a hit)
    and then left idle.  One at a time, so that none waits in the listen
    backlog."""
    conns = []
    try:
        for _ in range(n):
            c = Conn(port)
            conns.append(c)
            c.get()
            r = c.read_answer()
            assert (r.status, r.header("X-Cache")) == (200, "HIT"), \
                "idle client %d's first request: %r" % (len(conns), r)
    except BaseException:
        close_all(conns)
        raise
    return conns


def close_all(conns):
    for c in conns:
        c.close()


# ---------------------------------------------------------------- the daemon's side
def server_sockets(port, state):
    """How many TCP sockets with local port `port` (the daemon's ends of its
    client connections, and its listener) are in `state`."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            local, st = fields[1], int(fields[3], 16)
            if st == state and int(local.rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def fd_count(d):
    return len(os.listdir("/proc/%d/fd" % d.pid))


def settled(d, limit, timeout=SETTLE_TIMEOUT, what="the closed clients"):
    """Polls (without a request, which would wake the daemon) until none of
    the daemon's client sockets is in CLOSE-WAIT and it holds at most
    `limit` descriptors."""
    def check():
        return server_sockets(d.port, TCP_CLOSE_WAIT) == 0 and fd_count(d) <= limit

    try:
        wait_for(check, timeout=timeout, interval=0.002, what=what)
    except AssertionError:
        raise AssertionError(
            "%.1fs after %s closed, kaleidod still has %d sockets in CLOSE-WAIT and "
            "%d descriptors (want at most %d)"
            % (timeout, what, server_sockets(d.port, TCP_CLOSE_WAIT), fd_count(d), limit)
        ) from None


def baseline_fds(d):
    """The daemon's descriptor count with no client connected (after the
    clients so far are gone at its end too)."""
    wait_for(lambda: server_sockets(d.port, TCP_ESTABLISHED) == 0
             and server_sockets(d.port, TCP_CLOSE_WAIT) == 0,
             timeout=10, what="no client connections at kaleidod")
    return fd_count(d)


def warm(d):
    """Caches /programs, so that every later GET of it is a hit."""
    assert d.get("/programs").status == 200
    r = d.get("/programs")
    assert (r.status, r.header("X-Cache")) == (200, "HIT"), r


def threads_stopped(pid):
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state not in ("T", "t"):
            return False
    return True


@contextlib.contextmanager
def paused(d):
    """The daemon stopped (SIGSTOP, every thread) for the block, and let go
    (SIGCONT) after it: what clients do meanwhile reaches it as one batch."""
    os.kill(d.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: threads_stopped(d.pid), timeout=10, interval=0.001,
                 what="kaleidod's threads to stop")
        yield
    finally:
        os.kill(d.pid, signal.SIGCONT)


# ---------------------------------------------------------------- tests
BATCHES = [127, 128, 129, 255, 256, 257, 384, 512]


@pytest.mark.parametrize("n", BATCHES)
def test_n_keepalive_clients_sending_at_once_all_get_answers_and_others_too(
        daemon_factory, mock, n):
    """With one server thread, N idle keep-alive clients that send a request
    all at once all get their hits, and then a further client its own.
    (libmicrohttpd 0.9.75's epoll loop, after a batch of exactly 128 events,
    waited for the next event or a connection timeout before serving it.)"""
    need_fds(n)
    d = daemon_factory(mock, config={"server": SERVER}).start()
    warm(d)
    conns = open_idle(d.port, n)
    try:
        with paused(d):
            for c in conns:
                c.get()
        bad = not_hits(read_answers(conns))
        assert not bad, "%d of %d keep-alive clients sending at once got no HIT, e.g. %r" % (
            len(bad), n, bad[:3])
        r = request(d.port, "GET", "/programs", timeout=ANSWER_TIMEOUT)
        assert (r.status, r.header("X-Cache")) == (200, "HIT"), r
    finally:
        close_all(conns)


@pytest.mark.parametrize("n", BATCHES)
def test_n_keepalive_clients_closing_at_once_leave_no_close_wait_and_no_fds(
        daemon_factory, mock, n):
    """With one server thread, when N idle keep-alive clients close all at
    once, the daemon closes its ends with nothing else to wake it: no socket
    stays in CLOSE-WAIT and its descriptors return to the baseline.  It
    serves on afterwards.  (With libmicrohttpd 0.9.75's epoll loop, N a
    multiple of 128 left them all there until the connection timeout.)"""
    need_fds(n)
    d = daemon_factory(mock, config={"server": SERVER}).start()
    warm(d)
    base = baseline_fds(d)
    conns = open_idle(d.port, n)
    assert fd_count(d) >= base + n
    with paused(d):
        close_all(conns)
    settled(d, base, what="%d keep-alive clients" % n)
    r = request(d.port, "GET", "/programs", timeout=ANSWER_TIMEOUT)
    assert (r.status, r.header("X-Cache")) == (200, "HIT"), r


def test_idle_and_slow_clients_do_not_hold_up_a_normal_one(daemon_factory, mock):
    """1000 idle keep-alive clients and 200 that send their request one
    byte at a time do not keep a normal client from its hit on the one
    server thread; the slow ones are served once their requests are whole,
    and when all close the daemon's descriptors return to the baseline."""
    need_fds(1200)
    d = daemon_factory(mock, config={"server": SERVER}).start()
    warm(d)
    base = baseline_fds(d)
    idle = open_idle(d.port, 1000)
    slow = []
    try:
        for _ in range(200):
            slow.append(Conn(d.port))
        req = get_bytes(d.port)
        rounds = 8  # "GET /pro": a request still far from whole
        for i in range(rounds):
            for c in slow:
                c.send(req[i:i + 1])
        r = request(d.port, "GET", "/programs", timeout=ANSWER_TIMEOUT)
        assert (r.status, r.header("X-Cache")) == (200, "HIT"), r
        # The slow requests are still open; now they are completed.
        for c in slow:
            c.send(req[rounds:])
        bad = not_hits(read_answers(slow))
        assert not bad, "%d of 200 slow clients got no HIT, e.g. %r" % (len(bad), bad[:3])
    finally:
        close_all(slow)
        close_all(idle)
    settled(d, base, what="1200 clients")


def test_over_max_connections_503_json_retry_after_then_served_when_a_slot_frees(
        daemon_factory, mock):
    """With max_connections = 32 and 32 idle keep-alive clients held, a
    33rd client's request is answered 503 with a JSON error "too many
    connections" and Retry-After, and the daemon closes that connection;
    once one of the 32 has gone, a new client gets its 200 again, and the
    admin endpoints still answer."""
    d = daemon_factory(mock, config={"server": {"threads": "1",
                                                "max_connections": "32"}}).start()
    warm(d)
    base = baseline_fds(d)
    held = open_idle(d.port, 32)
    extra = None
    try:
        extra = Conn(d.port)
        extra.get()
        try:
            r = extra.read_answer()
        except (OSError, ConnectionError) as e:
            raise AssertionError("the 33rd client got no answer: %r" % e) from None
        assert r.status == 503, r
        assert "json" in (r.header("Content-Type") or ""), r
        err = r.json()
        assert err.get("error") == "too many connections", err
        assert isinstance(err.get("detail"), str) and err["detail"], err
        assert r.header("Retry-After"), r
        assert extra.closed_by_server(), "the 503 connection was left open"
        extra.close()
        extra = None

        held.pop().close()
        wait_for(lambda: fd_count(d) <= base + 31, timeout=10, interval=0.002,
                 what="kaleidod to release the closed connection")
        c = Conn(d.port)
        held.append(c)
        c.get()
        r = c.read_answer()
        assert (r.status, r.header("X-Cache")) == (200, "HIT"), r
    finally:
        if extra is not None:
            extra.close()
        close_all(held)
    settled(d, base, what="the 32 clients")
    assert d.health()["status"]
    assert d.stats()["total"]["hits"] >= 32 + 2
