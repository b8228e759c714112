"""kaleidod's life from start to stop: a damaged, foreign or unreachable
cache file never stops it (moved aside, or no cache); SIGTERM lets the
requests in flight finish within the drain window and ends the rest; with
the API down it still answers its health endpoint and says why; and its
retries of a refused authentication back off instead of hammering."""

import glob
import os
import signal
import socket
import sqlite3
import threading
import time


from harness import Sdk, wait_for

DRAIN_S = 5.0


def xc(r):
    return r.header("X-Cache")


def moved_aside_lines(d):
    return [l for l in d.log().splitlines() if "moved it aside" in l]


def user_version(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_corrupt_cache_file_is_moved_aside_and_caching_works(daemon_factory, mock, tmp_path):
    path = str(tmp_path / "cache.db")
    garbage = b"this is not an SQLite database \x00\xff\xfe" * 512
    with open(path, "wb") as f:
        f.write(garbage)
    d = daemon_factory(mock, cache_file=path).start()
    lines = moved_aside_lines(d)
    assert len(lines) == 1, "want one log line about moving the file aside:\n%s" % d.log()
    bad = glob.glob(path + ".bad-*")
    assert len(bad) == 1, os.listdir(str(tmp_path))
    assert bad[0] in lines[0], lines[0]
    with open(bad[0], "rb") as f:
        assert f.read() == garbage, "the moved file is not the damaged one"
    assert user_version(path) >= 1, "no new cache at the path"
    h = d.health()
    assert h["cache"]["enabled"] is True and h["cache"]["file"] == path, h
    s = Sdk(d.port)
    a, b = s.get("/programs"), s.get("/programs")
    assert (a.status, xc(a)) == (200, "MISS"), a
    assert (b.status, xc(b)) == (200, "HIT"), b
    assert a.body == b.body
    assert mock.count("GET /programs") == 1


def test_uncreatable_cache_path_runs_with_memory_cache_only(daemon_factory, mock, tmp_path):
    parent = tmp_path / "not-a-directory"
    parent.write_bytes(b"a regular file\n")
    path = str(parent / "cache.db")
    d = daemon_factory(mock, cache_file=path).start()
    h = d.health()
    assert h["cache"]["enabled"] is False, h
    assert h["status"] == "degraded", h
    assert "WITHOUT a cache file" in d.log(), d.log_tail()
    s = Sdk(d.port)
    for i in range(3):
        r = s.get("/programs")
        assert (r.status, xc(r)) == (200, "MISS" if i == 0 else "HIT"), (i, r)
        assert r.json()[0]["title"].startswith("Program 0"), r
    assert mock.count("GET /programs") == 1
    assert s.get("/activities/x").status == 200
    assert parent.read_bytes() == b"a regular file\n"
    # Memory only: a restart starts empty.
    d.restart()
    r = Sdk(d.port).get("/programs")
    assert (r.status, xc(r)) == (200, "MISS"), r
    assert mock.count("GET /programs") == 2


def test_cache_from_newer_schema_is_moved_aside_not_misread(daemon_factory, mock, tmp_path):
    path = str(tmp_path / "cache.db")
    d = daemon_factory(mock, cache_file=path).start()
    real = Sdk(d.port).get("/programs")
    assert (real.status, xc(real)) == (200, "MISS"), real
    d.stop()
    # A "future" kaleidod rewrote the file: same table, different meaning.
    db = sqlite3.connect(path)
    try:
        n = db.execute("UPDATE entries SET expires_at = expires_at + 86400").rowcount
        assert n == 1, n
        n = db.execute("UPDATE bodies SET body = ?", (b'["written by schema 99"]',)).rowcount
        assert n == 1, n
        db.execute("PRAGMA user_version = 99")
        db.commit()
    finally:
        db.close()
    assert user_version(path) == 99
    d.start()
    r = Sdk(d.port).get("/programs")
    assert r.body != b'["written by schema 99"]', "read a schema-99 entry as its own: %r" % r
    assert (r.status, xc(r)) == (200, "MISS"), r
    assert r.body == real.body
    bad = glob.glob(path + ".bad-*")
    bad = [b for b in bad if not b.endswith(("-wal", "-shm"))]
    assert len(bad) == 1, os.listdir(str(tmp_path))
    assert user_version(bad[0]) == 99
    assert user_version(path) < 99
    assert len(moved_aside_lines(d)) == 1, d.log()
    r = Sdk(d.port).get("/programs")
    assert (r.status, xc(r)) == (200, "HIT"), r


def held_request(d, target, out):
    try:
        out["response"] = Sdk(d.port).get(target)
    except Exception as e:  # the connection closed: what the test looks at
        out["error"] = e


def sigterm_with_held_request(d, mock, target):
    out = {}
    mock.hold(target)
    t = threading.Thread(target=held_request, args=(d, target, out))
    t.start()
    wait_for(lambda: mock.stats()["held"] == 1, timeout=10, what="the request held at the mock")
    t0 = time.monotonic()
    os.kill(d.pid, signal.SIGTERM)
    wait_for(lambda: "upstream transfers" in d.log() or d.proc.poll() is not None,
             timeout=5, what="the daemon to start draining")
    return t, out, t0


def test_sigterm_lets_inflight_request_finish_within_drain_window(daemon, mock):
    d = daemon
    t, out, t0 = sigterm_with_held_request(d, mock, "/activities/held")
    assert d.proc.poll() is None, "exited at once with a request in flight:\n" + d.log_tail()
    mock.release()
    t.join(15)
    assert not t.is_alive()
    assert "error" not in out, "in-flight client got %r" % out.get("error")
    r = out["response"]
    assert r.status == 200, r
    assert r.json()["target"] == "/activities/held"
    rc = d.wait_exit(10)
    assert rc == 0, "exit status %s:\n%s" % (rc, d.log_tail())
    assert time.monotonic() - t0 < DRAIN_S + 5


def test_sigterm_ends_request_held_past_drain_window_and_exits_0(daemon, mock):
    d = daemon
    try:
        t, out, t0 = sigterm_with_held_request(d, mock, "/activities/stuck")
        rc = d.wait_exit(15)
        took = time.monotonic() - t0
        t.join(15)
    finally:
        mock.release()
    assert rc == 0, "exit status %s:\n%s" % (rc, d.log())
    assert DRAIN_S - 0.5 <= took <= 10.0, "exited %.1f s after SIGTERM" % took
    assert not t.is_alive()
    if "response" in out:
        r = out["response"]
        assert r.status >= 500, "stuck client got %r" % r
        assert isinstance(r.json().get("error"), str), r
    else:
        # Closed by the daemon, not given up on by the client.
        assert not isinstance(out["error"], socket.timeout), out


def test_health_answers_with_upstream_down_failing_and_cause(daemon_factory, closed_port):
    d = daemon_factory("http://127.0.0.1:%d" % closed_port).start()
    r = d.get("/_kaleidod/health")
    assert r.status in (200, 503), r
    h = wait_for(lambda: (lambda h: h if h["upstream"]["auth"]["state"] == "failing" else None)(
        d.health()), timeout=10, what="auth state failing")
    assert h["status"] == "degraded", h
    err = (h["upstream"]["auth"]["last_error"] or "").lower()
    assert any(w in err for w in ("refused", "connect")), h
    assert str(closed_port) in err or "127.0.0.1" in err, h
    assert h["upstream"]["auth"]["failing_since"], h


def test_auth_retry_backoff_does_not_hammer(daemon_factory, mock):
    window = 6.0
    d = daemon_factory(mock, secret="wrong-secret",
                       config={"upstream": {"auth_retry_min": "1",
                                            "auth_retry_max": "2"}}).start()

    def tries():
        return mock.stats()["counts"].get("POST /auth/oauth/token", 0)

    wait_for(tries, timeout=10, what="the first token request")
    start = time.monotonic()
    base = tries()
    # Observe until the end of the window; the count is read at its end.
    deadline = start + window
    seen = base
    while time.monotonic() < deadline:
        seen = tries()
        assert seen - base < 10, "%d token requests within %.1f s" % (seen - base,
                                                                       time.monotonic() - start)
        time.sleep(0.25)
    seen = tries() - base
    assert mock.stats()["token"]["client_credentials"] == 0
    assert 1 < seen < 10, "%d token requests in %.0f s with auth_retry 1..2 s" % (seen, window)
    h = d.health()
    assert h["upstream"]["auth"]["state"] == "failing", h
