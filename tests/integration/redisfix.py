"""Redis for the cluster tests: a real redis-server process per test (its own
dir, a unix socket, no TCP port of its own, nothing saved unless asked),
a minimal RESP client to look at what kaleidod left there, and a TCP
forwarder the test controls (cut every connection, refuse or stall new
ones, restore) standing between one kaleidod and that Redis.

Every process is stopped by its own PID; every thread ends by itself.
"""

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from harness import file_tail, kill_process, stop_process, wait_for

REDIS_SERVER = os.environ.get("KD_REDIS_SERVER") or shutil.which("redis-server") \
    or "/usr/bin/redis-server"


# ---------------------------------------------------------------- RESP
class RespError(Exception):
    pass


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Resp:
    """One connection to Redis; command() sends one command and returns the
    reply (bytes, int, list, None; an error reply raises RespError)."""

    def __init__(self, addr, password=None, timeout=5.0):
        if isinstance(addr, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.buf = b""
        if password is not None:
            self.command("AUTH", password)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("redis closed the connection")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("redis closed the connection")
            self.buf += d
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RespError("unexpected reply %r" % line)

    def command(self, *args):
        self.sock.sendall(_encode(args))
        return self.reply()


# ---------------------------------------------------------------- redis-server
def socket_dir(prefix):
    """A fresh directory under /tmp for unix sockets: a socket's path must
    fit in 107 bytes, and a test's own directory (in a distcheck build tree,
    say) can be deeper than that.  The caller removes it."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class RedisServer:
    """redis-server on a unix socket (in a short dir of its own under /tmp),
    no TCP; its data and log in dirpath/name.  start() waits until it
    answers PING; kill() is SIGKILL; restart(empty) starts it again on the
    same socket, from its dump.rdb (written by save()) unless empty;
    close() kills it and removes the socket's dir."""

    def __init__(self, dirpath, password=None, name="redis"):
        self.dir = os.path.join(str(dirpath), name)
        os.makedirs(self.dir, exist_ok=True)
        self.sock_dir = socket_dir("kdredis-")
        self.sock_path = os.path.join(self.sock_dir, "redis.sock")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.password = password
        self.proc = None
        self.starts = 0

    @property
    def spec(self):
        """The [cluster] redis value that reaches it."""
        return "unix:" + self.sock_path

    def start(self):
        if self.proc is not None:
            raise AssertionError("redis-server already running")
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass
        args = [REDIS_SERVER, "--port", "0", "--unixsocket", self.sock_path,
                "--unixsocketperm", "700", "--dir", self.dir, "--dbfilename", "dump.rdb",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--logfile", self.log_path, "--databases", "16"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.starts += 1
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited with %s; log:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            with self.client(timeout=1.0) as r:
                return r.command("PING") == b"PONG"

        wait_for(answers, timeout=15, interval=0.02, what="redis-server to answer PING")
        return self

    def client(self, timeout=5.0):
        return Resp(self.sock_path, self.password, timeout)

    def command(self, *args):
        with self.client() as r:
            return r.command(*args)

    def save(self):
        """Writes dump.rdb now, so that a restart finds the data again."""
        assert self.command("SAVE") == b"OK"

    def kill(self):
        """SIGKILL, as a crash would end it; reaps it."""
        if self.proc is not None:
            kill_process(self.proc)
            self.proc = None

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def close(self):
        self.kill()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def restart(self, empty):
        self.kill()
        if empty:
            try:
                os.unlink(os.path.join(self.dir, "dump.rdb"))
            except FileNotFoundError:
                pass
        return self.start()

    def keys(self):
        return sorted(k.decode() for k in self.command("KEYS", "*"))

    def log_tail(self, n=40):
        return file_tail(self.log_path, n)


# ---------------------------------------------------------------- forwarder
UP, CUT, STALL = "up", "cut", "stall"


class Forwarder:
    """A TCP listener on 127.0.0.1 (port bound here and held for the
    forwarder's life) relaying each connection to a target (a unix socket
    path or a (host, port)).  Modes:
      up:    relay both ways;
      cut:   every open connection is closed (both sides) at once, and new
             ones are accepted and closed at once;
      stall: nothing is relayed either way on any connection, open or new
             (bytes wait in the kernel's buffers), until up again.
    connections() counts the relays open now (for waiting on a reconnect)."""

    def __init__(self, target):
        self.target = target
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.mode = UP
        self.pairs = []          # [client socket, upstream socket]
        self.accepted = 0
        self.closing = False
        self.wake_r, self.wake_w = os.pipe()
        self.threads = []
        t = threading.Thread(target=self._accept_loop, name="fwd-accept", daemon=True)
        t.start()
        self.threads.append(t)

    @property
    def spec(self):
        return "redis://127.0.0.1:%d" % self.port

    def _connect_target(self):
        if isinstance(self.target, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.target)
        s.settimeout(None)
        return s

    def _accept_loop(self):
        while True:
            r, _, _ = select.select([self.lsock, self.wake_r], [], [])
            if self.closing:
                return
            if self.lsock not in r:
                continue
            try:
                c, _ = self.lsock.accept()
            except OSError:
                continue
            with self.lock:
                self.accepted += 1
                mode = self.mode
            if mode == CUT:
                _close(c)
                continue
            try:
                u = self._connect_target()
            except OSError:
                _close(c)       # Redis down: the client sees the connection close
                continue
            pair = [c, u]
            with self.lock:
                if self.closing or self.mode == CUT:
                    _close(c)
                    _close(u)
                    continue
                self.pairs.append(pair)
            t = threading.Thread(target=self._relay, args=(pair,), name="fwd-relay",
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def _relay(self, pair):
        c, u = pair
        other = {c: u, u: c}
        try:
            while True:
                with self.lock:
                    mode = self.mode
                    gone = pair not in self.pairs
                if gone or self.closing:
                    return
                if mode != UP:
                    time.sleep(0.01)
                    continue
                r, _, _ = select.select([c, u], [], [], 0.05)
                for s in r:
                    d = s.recv(65536)
                    if not d:
                        return
                    other[s].sendall(d)
        except (OSError, ValueError):
            return
        finally:
            with self.lock:
                if pair in self.pairs:
                    self.pairs.remove(pair)
            _close(c)
            _close(u)

    def connections(self):
        with self.lock:
            return len(self.pairs)

    def set_mode(self, mode):
        with self.lock:
            self.mode = mode
            dropped = list(self.pairs) if mode == CUT else []
            if mode == CUT:
                self.pairs = []
        for c, u in dropped:     # the relay thread wakes on it and closes both
            _shutdown(c)
            _shutdown(u)

    def cut(self):
        self.set_mode(CUT)

    def stall(self):
        self.set_mode(STALL)

    def restore(self):
        self.set_mode(UP)

    def close(self):
        with self.lock:
            self.closing = True
            dropped, self.pairs = self.pairs, []
        os.write(self.wake_w, b"x")
        for c, u in dropped:
            _shutdown(c)
            _shutdown(u)
        for t in self.threads:
            t.join(5)
        self.lsock.close()
        os.close(self.wake_r)
        os.close(self.wake_w)


def _shutdown(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(s):
    _shutdown(s)
    try:
        s.close()
    except OSError:
        pass
