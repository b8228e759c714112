"""Regressions for cache bugs a review reproduced, one test per item.  Each
fails against the daemon as it was before the fix:

1. a GET sent after a write joined a fetch of the family that had started
   before the write, and got the pre-write answer;
2. a new version too large for memory left the old version there, so HITs
   kept serving it while the file held the new one;
3. an answer the API ended by closing the connection (no Content-Length, not
   chunked) on a cached path reached the client as a 502;
4. a gzip copy of an answer that says "Vary: Origin" was served without
   "Accept-Encoding" in Vary and with the identity form's strong ETag;
5. SIGTERM while the cache file was locked by another process, with misses
   in progress, ended in libmicrohttpd's abort (clients were waiting on the
   disk);
6. with the file locked, a write's invalidation held up the front thread
   (every other request, HITs included), and each miss waited for the disk;
7. a write whose delete failed in the file left the pre-write row there,
   and the next GET read it back;
8. an answer over max_entry_size was fetched twice on every request (an
   aborted collection, then directly);
9. only-if-cached served an entry expired longer ago than stale_if_error;
10. with stale-while-revalidate and a failing API, every STALE answer
    started another background refresh;
11. a write's delete that failed in the locked file was retried only at the
    next maintenance pass and never on the way out, so after a restart the
    pre-write rows were HITs again;
12. a 304 refresh updated the file's row whatever version it held: with the
    newer version's store failed, its headers were paired with the older
    version's body, and served so after a restart;
13. a reader whose memory miss read a row of a family while a write's
    invalidation was under way (between the table forgetting it and the
    file's delete, or while the delete ran) kept that pre-write row in
    memory: a HIT until its TTL.  A remote invalidation from another
    instance of a cluster, which nothing holds back, hit it most.

The cache file is locked the way another process would lock it: a write
transaction (BEGIN IMMEDIATE) on its own connection, rolled back in a
finally.  kaleidod's SQLite busy timeout is 5 s, so a file job it starts
under the lock fails after 5 s.
"""

import gzip
import json
import signal
import sqlite3
import threading
import time

from harness import (STOP_TIMEOUT, Sdk, cache_warnings, get_stored, past, row, sql, sql_one,
                     wait_for)


def xc(r):
    return r.header("X-Cache")


def bg(fn):
    """Runs fn in a thread; (thread, dict) with "r" the result or exception
    and "t" the seconds it took."""
    out = {}

    def run():
        t0 = time.monotonic()
        try:
            out["r"] = fn()
        except Exception as e:  # reported by the test
            out["r"] = e
        out["t"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    return t, out


def settle(d, s, paths):
    """The daemon's first maintenance pass runs along with its first file
    job; with two answers written, it is over, and a lock taken now holds
    up only what the test sends (not a maintenance pass, which would add a
    busy timeout per statement)."""
    assert len(paths) >= 2
    return [get_stored(d, s, p) for p in paths]


class FileLock:
    """A write lock on the cache file, as another process would hold it."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, timeout=2, isolation_level=None)
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.db.close()
            raise

    def release(self):
        if self.db is None:
            return
        try:
            self.db.execute("ROLLBACK")
        finally:
            self.db.close()
            self.db = None


# ---------------------------------------------------------------- 1
def test_get_after_a_write_does_not_join_a_fetch_started_before_it(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    prewrite = b'["prewrite"]'
    raw = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
           "\r\n%s" % (len(prewrite), prewrite.decode()))
    # The first fetch is held at the mock and answers the pre-write body
    # when released; later fetches get the API's own answer.
    mock.fault("/record_views", "raw", method="GET", raw=raw, wait=True, times=1)
    ta, a = bg(lambda: s.get("/record_views"))
    tb = None
    try:
        wait_for(lambda: mock.stats()["held"] == 1, timeout=10,
                 what="the first GET's fetch held at the mock")
        w = s.post("/push/imports", {})
        assert w.status == 200, w
        assert daemon.stats()["families"]["record_views"]["invalidations"] >= 1
        tb, b = bg(lambda: s.get("/record_views"))
        # It has its own fetch, answered while the first one is still held.
        wait_for(lambda: mock.count("GET /record_views") == 2, timeout=8,
                 what="the GET sent after the write to make its own upstream request "
                 "(not join the fetch started before the write)")
        wait_for(lambda: not tb.is_alive(), timeout=8,
                 what="the GET sent after the write to be answered")
        assert mock.stats()["held"] == 1
    finally:
        mock.release()
        ta.join(15)
        if tb is not None:
            tb.join(15)
    rb = b["r"]
    assert not isinstance(rb, Exception), rb
    assert rb.status == 200 and xc(rb) == "MISS", rb
    assert rb.body != prewrite, "the GET sent after the write got the pre-write answer"
    assert "(gen 2)" in json.loads(rb.body)[0]["view_name"], rb
    assert mock.count("GET /record_views") == 2
    ra = a["r"]
    assert not isinstance(ra, Exception) and ra.status == 200, ra
    # The pre-write answer, delivered to the one who asked before the
    # write, was not kept either.
    after = s.get("/record_views")
    assert after.status == 200 and after.body == rb.body, after
    assert mock.count("GET /record_views") == 2


# ---------------------------------------------------------------- 2
def test_new_version_too_large_for_memory_replaces_the_old_one(daemon_factory, mock):
    d = daemon_factory(mock, config={"cache": {"memory": "64K"}}).start()
    s = Sdk(d.port)
    s.auth()
    mock.config(programs_bytes=8000)
    old = s.get("/programs")
    assert old.status == 200 and xc(old) == "MISS", old
    assert 8000 <= len(old.body) < 16000
    hit = s.get("/programs")
    assert xc(hit) == "HIT" and hit.body == old.body, hit
    # The API's version grows past half of memory (32K).
    mock.config(programs_bytes=40000)
    mock.call("POST", "/_mock/bump", {"families": ["programs"]})
    new = s.get("/programs", headers=[("Cache-Control", "no-cache")])
    assert new.status == 200 and len(new.body) >= 40000, new
    assert new.body != old.body
    wait_for(lambda: row(d, "/programs", "identity_len") == len(new.body), timeout=10,
             what="the 40 KB version to be written to the file")
    n = mock.count("GET /programs")
    r = s.get("/programs")
    assert r.status == 200, r
    assert r.body == new.body, "served the old version (%d bytes, X-Cache %s) after the %d " \
        "byte one was stored" % (len(r.body), xc(r), len(new.body))
    assert xc(r) == "HIT" and mock.count("GET /programs") == n, r


# ---------------------------------------------------------------- 3
def test_close_delimited_answer_on_a_cached_path_is_delivered_not_stored(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    raw = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
           "\r\n[1,2,3]")
    mock.fault("/programs", "raw", method="GET", raw=raw, times=1)
    r = s.get("/programs")
    assert r.status == 200, r
    assert r.body == b"[1,2,3]", r
    assert mock.count("GET /programs") == 1
    # Not kept (its end was not framed): the next GET goes to the API,
    # whose framed answer is kept.
    again = s.get("/programs")
    assert again.status == 200 and xc(again) == "MISS", again
    assert "(gen 1)" in json.loads(again.body)[0]["title"], again
    assert mock.count("GET /programs") == 2
    third = s.get("/programs")
    assert xc(third) == "HIT" and third.body == again.body, third
    assert mock.count("GET /programs") == 2


# ---------------------------------------------------------------- 4
def vary(r):
    return {v.strip().lower() for h in r.header_all("Vary") for v in h.split(",")}


def test_vary_from_the_api_is_merged_and_gzip_etag_is_weak(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    mock.config(extra_headers=[["Vary", "Origin"]], programs_bytes=4000)
    api_etag = mock.direct_get("/programs").header("ETag")
    assert api_etag and not api_etag.startswith("W/"), api_etag
    first = s.get("/programs")
    assert first.status == 200 and xc(first) == "MISS", first

    gz = s.get("/programs", headers=[("Accept-Encoding", "gzip")])
    assert gz.status == 200 and xc(gz) == "HIT", gz
    assert gz.header("Content-Encoding") == "gzip", gz
    assert gzip.decompress(gz.body) == first.body
    assert {"origin", "accept-encoding"} <= vary(gz), gz.header_all("Vary")
    assert gz.header("ETag") == "W/" + api_etag, gz

    ident = s.get("/programs")
    assert ident.status == 200 and xc(ident) == "HIT" and ident.body == first.body, ident
    assert ident.header("Content-Encoding") is None, ident
    assert ident.header("ETag") == api_etag, ident
    assert {"origin", "accept-encoding"} <= vary(ident), ident.header_all("Vary")

    for etag, ae in ((gz.header("ETag"), [("Accept-Encoding", "gzip")]), (api_etag, [])):
        nm = s.get("/programs", headers=[("If-None-Match", etag)] + ae)
        assert nm.status == 304 and nm.body == b"", nm
        assert {"origin", "accept-encoding"} <= vary(nm), (etag, nm.headers)
        assert nm.header("ETag") == etag, (etag, nm.headers)
    assert mock.count("GET /programs") == 2    # the direct one and the MISS


# ---------------------------------------------------------------- 5
# Below the harness's stop timeout with room to spare: the test stays under
# 10 s, and a daemon that sits out two busy timeouts (10 s) on its way out
# fails every time rather than now and then.
EXIT_BOUND = STOP_TIMEOUT - 2.0


def test_sigterm_with_the_file_locked_and_misses_under_way_exits_0(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    settle(daemon, s, ["/entity_slices/settle-1", "/entity_slices/settle-2"])
    targets = ["/programs/%d" % i for i in range(1, 5)]
    lock = FileLock(daemon.cache_file)
    clients = []
    signalled = False
    try:
        clients = [bg(lambda t=t: s.get(t)) for t in targets]
        wait_for(lambda: sum(mock.count("GET " + t) for t in targets) == 4, timeout=10,
                 what="the four misses to reach the API")
        daemon.proc.send_signal(signal.SIGTERM)
        signalled = True
        rc = daemon.wait_exit(timeout=EXIT_BOUND)
    finally:
        lock.release()
        if signalled and daemon.proc is not None:
            # Too slow: with the file free it ends now; reap it here so the
            # fixture does not report that exit as a crash of its own.
            try:
                daemon.wait_exit(timeout=STOP_TIMEOUT)
            except AssertionError:
                pass
        for t, _ in clients:
            t.join(15)
    assert rc == 0, "exit code %s after SIGTERM" % rc
    for target, (_, out) in zip(targets, clients):
        r = out["r"]
        assert not isinstance(r, Exception), (target, r)
        assert r.status == 200 and isinstance(json.loads(r.body), list), (target, r)


# ---------------------------------------------------------------- 6
# What the daemon logs (debug) about the write of this test, in order: the
# front thread queues the deletes of both families and parks the write; the
# file thread's first delete waits out SQLite's 5 s busy timeout and then
# warns; after KEEPER_DURABLE_WAIT (2 s) the parked write is answered anyway.
WRITE_QUEUED = ("POST /push/imports invalidated entity_slices",
                "POST /push/imports invalidated record_views")
WRITE_RELEASED = "writes answered before the file took their invalidations"
DELETE_REFUSED = "cannot invalidate"


def write_events(d):
    """(both deletes queued, the parked write answered, a delete refused):
    what the daemon's log says has happened so far."""
    log = d.log()
    return (all(q in log for q in WRITE_QUEUED), WRITE_RELEASED in log, DELETE_REFUSED in log)


def test_locked_file_holds_up_neither_the_front_thread_nor_misses(daemon_factory, mock):
    # One front thread: if a write's deletes waited on the locked file in
    # it, no other request would be served meanwhile.  The proof is an
    # order of events, not a latency: HITs sent after the deletes were
    # queued are answered while the write is still parked and before the
    # file thread's first delete has even failed (5 s busy timeout); each
    # miss is answered while its store has neither succeeded (the file is
    # locked all along) nor failed (write_errors still 0).
    d = daemon_factory(mock, config={"server": {"threads": "1"}}).start()
    s = Sdk(d.port)
    s.auth()
    settle(d, s, ["/programs", "/programs/settle"])
    hit = s.get("/programs")
    assert xc(hit) == "HIT", hit
    lock = FileLock(d.cache_file)
    tw = None
    misses = []
    try:
        # A write of two families: its invalidations wait on the file.
        tw, w = bg(lambda: s.post("/push/imports", {}))
        wait_for(lambda: mock.count("POST /push/imports") == 1, timeout=10,
                 what="the write to reach the API")
        hits = []           # (X-Cache, status, seconds, served while the write waited)
        while tw.is_alive() and len(hits) < 1000:
            queued, _, _ = write_events(d)
            t0 = time.monotonic()
            try:
                r = s.get("/programs")
                h = (xc(r), r.status)
            except OSError as e:
                h = (repr(e), None)
            took = time.monotonic() - t0
            _, released, refused = write_events(d)
            hits.append(h + (round(took, 3), queued and not released and not refused))
            if sum(1 for x in hits if x[3]) >= 5:
                break
        tw.join(30)
        assert not tw.is_alive(), "the write was not answered while the file was locked"
        queued, released, refused = write_events(d)
        log = d.log()
        misses = [bg(lambda i=i: s.get("/programs/miss-%d" % i)) for i in range(4)]
        for t, _ in misses:
            t.join(30)
        unanswered = sum(1 for t, _ in misses if t.is_alive())
        # Read while the lock is still held: nothing can have been stored.
        write_errors = d.stats()["cache"]["write_errors"]
        rows = [row(d, "/programs/miss-%d" % i) for i in range(4)]
    finally:
        lock.release()
        if tw is not None:
            tw.join(15)
        for t, _ in misses:
            t.join(15)
    assert hits and all(h[:2] == ("HIT", 200) for h in hits), hits
    assert any(h[3] for h in hits), (
        "no HIT was served between the write's deletes being queued and the write's "
        "answer (or the first refused delete): the front thread waited on the file: %r" % hits)
    wr = w["r"]
    assert not isinstance(wr, Exception) and wr.status == 200, wr
    # A write's answer waits for its invalidation to reach the file (so a
    # crash cannot undo it), but no longer than KEEPER_DURABLE_WAIT (2 s)
    # when the file refuses: then it is answered, and the delete retried.
    # Answered by that deadline, and before the file thread's first delete
    # gave up: the write itself never waited out a busy timeout.
    assert queued and released, "the write was not parked, then released (%.2f s)" % w["t"]
    refused_at = log.find(DELETE_REFUSED)
    assert refused_at < 0 or log.find(WRITE_RELEASED) < refused_at, \
        "the write was answered only after a delete failed in the locked file"
    assert unanswered == 0, "%d misses were not answered while the file was locked" % unanswered
    for _, out in misses:
        r = out["r"]
        assert not isinstance(r, Exception), r
        assert r.status == 200 and xc(r) == "MISS", r
    # A miss that waited for its store could only be answered once the store
    # failed in the locked file (counted in write_errors); all four were
    # answered with their stores still pending.
    assert write_errors == 0, (
        "misses waited for their stores in the locked file: write_errors %d, "
        "misses took %r s" % (write_errors, [round(out["t"], 3) for _, out in misses]))
    assert rows == [0] * 4, rows


# ---------------------------------------------------------------- 7
def test_failed_delete_after_a_write_does_not_bring_the_old_entry_back(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    # The first settling entry is the one the write must void.
    old, _ = settle(daemon, s, ["/record_views", "/programs/settle"])
    assert "(gen 1)" in old.body.decode()
    assert xc(s.get("/record_views")) == "HIT"
    lock = FileLock(daemon.cache_file)
    try:
        # A write to the family itself: one family, one delete to fail.
        w = s.post("/record_views", {"name": "x"})
        assert w.status == 200, w
        assert mock.stats()["gens"]["record_views"] == 2
        wait_for(lambda: [ln for ln in cache_warnings(daemon)
                          if "invalidate" in ln and "record_views" in ln],
                 timeout=9, what="the delete of record_views to fail in the locked file")
        # The row is still in the file; memory no longer has the entry.
        assert row(daemon, "/record_views") == 1
        r = s.get("/record_views")
    finally:
        lock.release()
    assert r.status == 200, r
    assert "(gen 1)" not in r.body.decode(), "the pre-write entry came back (X-Cache %s)" % xc(r)
    assert "(gen 2)" in r.body.decode(), r
    assert xc(r) == "MISS", r
    again = s.get("/record_views")
    assert again.status == 200 and "(gen 1)" not in again.body.decode(), again


# ---------------------------------------------------------------- 8
def test_answer_over_max_entry_size_costs_one_fetch_after_the_first(daemon_factory, mock):
    d = daemon_factory(mock, config={"cache": {"max_entry_size": "16K"}}).start()
    s = Sdk(d.port)
    s.auth()
    mock.config(programs_bytes=400000)
    want = mock.direct_get("/programs").body
    assert len(want) >= 400000
    base = mock.count("GET /programs")
    for i in range(3):
        r = s.get("/programs")
        assert r.status == 200, (i, r)
        assert r.body == want, (i, len(r.body))
        assert xc(r) != "HIT", (i, r)
    n = mock.count("GET /programs") - base
    assert n <= 4, "%d upstream GETs for 3 client GETs of a too-large answer" % n


# ---------------------------------------------------------------- 9
def test_only_if_cached_past_stale_if_error_is_504(daemon_factory, mock):
    d = daemon_factory(mock, config={"family.programs": {"ttl": "1"},
                                     "cache": {"stale_if_error": "1"}}).start()
    s = Sdk(d.port)
    s.auth()
    stale = get_stored(d, s, "/programs")
    expires = row(d, "/programs", "expires_at")
    # Past the stale limit: the daemon's clock (whole seconds) at or after
    # expires_at + stale_if_error.
    wait_for(lambda: past(expires + 1), timeout=5, interval=0.05,
             what="the entry to pass its stale limit")
    r = s.get("/programs", headers=[("Cache-Control", "only-if-cached")])
    assert r.status == 504, r
    assert r.body != stale.body
    assert "json" in (r.header("Content-Type") or ""), r
    e = r.json()
    assert e.get("error") and e.get("detail"), e
    assert mock.count("GET /programs") == 1


# ---------------------------------------------------------------- 10
def test_stale_while_revalidate_with_failing_api_refreshes_once_not_per_hit(daemon_factory,
                                                                            mock):
    d = daemon_factory(mock, config={"family.programs": {"ttl": "1"},
                                     "cache": {"stale_while_revalidate": "60",
                                               "refresh_ahead": "no"}}).start()
    s = Sdk(d.port)
    s.auth()
    first = get_stored(d, s, "/programs")
    expires = row(d, "/programs", "expires_at")
    wait_for(lambda: past(expires), timeout=5, interval=0.05,
             what="the entry to expire")
    mock.fault("/programs", "status", method="GET", status=500)
    base = mock.count("GET /programs")
    seen = []
    for i in range(10):
        r = s.get("/programs")
        seen.append((r.status, xc(r)))
        assert r.body == first.body, (i, r)
        # Whatever background refresh this started is over before the next.
        wait_for(lambda: d.stats()["upstream"]["active"] == 0, timeout=10,
                 what="no upstream transfer under way")
    assert seen == [(200, "STALE")] * 10, seen
    n = mock.count("GET /programs") - base
    assert 1 <= n <= 2, "%d upstream GETs behind 10 STALE answers with the API failing" % n


# ---------------------------------------------------------------- 11
def test_failed_delete_after_a_write_is_not_lost_across_a_restart(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    paths = ["/programs", "/programs/other"]
    old = settle(daemon, s, paths)
    assert all("(gen 1)" in r.body.decode() for r in old)
    lock = FileLock(daemon.cache_file)
    try:
        w = s.post("/programs", {"name": "x"})
        assert w.status == 200, w
        assert mock.stats()["gens"]["programs"] == 2
        wait_for(lambda: [ln for ln in cache_warnings(daemon)
                          if "invalidate" in ln and "programs" in ln],
                 timeout=9, what="the delete of programs to fail in the locked file")
        assert sql_one(daemon.cache_file,
                       "SELECT count(*) FROM entries WHERE family = 'programs'") == 2
    finally:
        lock.release()
    # Stopped at once, well within maintenance_interval: the delete is
    # either retried by now or done on the way out.
    daemon.stop()
    left = sql(daemon.cache_file, "SELECT key, stored_at FROM entries WHERE family = 'programs'")
    daemon.start()
    s = Sdk(daemon.port)
    s.auth()
    for p in paths:
        n = mock.count("GET " + p)
        r = s.get(p)
        assert r.status == 200, (p, r)
        assert "(gen 1)" not in r.body.decode(), \
            "%s: the pre-write entry came back after the restart (X-Cache %s)" % (p, xc(r))
        assert "(gen 2)" in r.body.decode() and xc(r) == "MISS", (p, r)
        assert mock.count("GET " + p) == n + 1, p
    assert left == [], "pre-write rows still in the file after the daemon stopped: %r" % left


# ---------------------------------------------------------------- 12
def test_refresh_after_a_failed_store_keeps_headers_with_their_body(daemon_factory, mock):
    d = daemon_factory(mock, config={"family.programs": {"ttl": "2"},
                                     "cache": {"stale_while_revalidate": "0"}}).start()
    s = Sdk(d.port)
    s.auth()
    v1 = get_stored(d, s, "/programs")
    assert "(gen 1)" in v1.body.decode()
    expires = row(d, "/programs", "expires_at")
    mock.call("POST", "/_mock/bump", {"families": ["programs"]})
    wait_for(lambda: past(expires), timeout=5, interval=0.05,
             what="version 1 to expire")
    lock = FileLock(d.cache_file)
    try:
        # Version 2 comes in (a 200 to the conditional fetch); its store
        # fails in the locked file, which still holds version 1.
        v2 = s.get("/programs")
        fetched = int(time.time())
        assert v2.status == 200 and xc(v2) == "MISS", v2
        assert "(gen 2)" in v2.body.decode(), v2
        etag2 = v2.header("ETag")
        assert etag2 and etag2 != v1.header("ETag"), (etag2, v1.header("ETag"))
        assert mock.conditional("GET /programs") == 1
        assert mock.not_modified("GET /programs") == 0
        wait_for(lambda: d.stats()["cache"]["write_errors"] == 1, timeout=9,
                 what="the store of version 2 to fail in the locked file")
    finally:
        lock.release()
    # Version 2 (ttl 2, stored in memory at or before `fetched`) expires;
    # its revalidation is answered 304.
    wait_for(lambda: past(fetched + 2), timeout=5, interval=0.05,
             what="version 2 to expire")
    r = s.get("/programs")
    assert r.status == 200 and r.body == v2.body, r
    assert mock.not_modified("GET /programs") == 1, mock.stats()
    wait_for(lambda: etag2.encode() in (row(d, "/programs", "headers") or b""), timeout=10,
             what="the refreshed entry to be written to the file")
    d.stop()
    d.start()
    s = Sdk(d.port)
    s.auth()
    n = mock.count("GET /programs")
    # From the file, never from the API: version 2's 2 s may be over by
    # now (a restart under load takes a while), and the copy kept is what
    # is looked at, fresh (HIT) or not (STALE, within stale_if_error).
    after = s.get("/programs", headers=[("Cache-Control", "only-if-cached")])
    assert after.status == 200 and xc(after) in ("HIT", "STALE"), after
    assert mock.count("GET /programs") == n
    assert after.header("ETag") == etag2, after
    assert "(gen 1)" not in after.body.decode(), \
        "version 2's headers (ETag %s) served with version 1's body" % etag2
    assert after.body == v2.body, after


def test_a_purge_waiting_on_the_locked_file_holds_up_no_other_request(daemon_factory, mock):
    # One serve thread.  A purge runs on the file thread while its request
    # is parked; if it ran on the serve thread instead (waiting for the
    # file queue, then SQLite's busy timeout on the locked file), nothing
    # else on that thread would be answered until it ended.  The proof is
    # an order of events: requests sent after the purge was queued are all
    # answered while the purge still has no answer, which it cannot get
    # before the lock is released (or SQLite gives up after 5 s).
    d = daemon_factory(mock, config={"server": {"threads": "1"}}).start()
    s = Sdk(d.port)
    s.auth()
    settle(d, s, ["/programs", "/programs/settle"])
    lock = FileLock(d.cache_file)
    tp = None
    try:
        tp, p = bg(lambda: d.request("POST", "/_kaleidod/purge",
                                     [("Content-Type", "application/json")],
                                     b'{"family": "programs"}'))
        wait_for(lambda: "purge queued for the cache file" in d.log(), timeout=10,
                 what="the purge to be queued for the file thread")
        answered_meanwhile = []
        for i in range(3):
            r = s.get("/entity_slices" if i % 2 else "/programs")
            answered_meanwhile.append((r.status, tp.is_alive()))
        health = d.get("/_kaleidod/health")
        purge_pending = tp.is_alive()
    finally:
        lock.release()
        if tp is not None:
            tp.join(30)
    assert all(st == 200 for st, _ in answered_meanwhile), answered_meanwhile
    assert purge_pending and all(alive for _, alive in answered_meanwhile), (
        "the purge was answered before the requests sent after it: the serve thread "
        "waited for the file (%r)" % answered_meanwhile)
    assert health.status in (200, 503), health
    pr = p["r"]
    assert not isinstance(pr, Exception), pr
    # Held a moment only, the lock is normally gone before SQLite's busy
    # timeout (5 s) runs out: then the purge ran.  On a machine slow
    # enough to outlast it, the purge fails, and says so.
    if pr.status == 200:
        assert json.loads(pr.body)["purged"] >= 2
        assert not row(d, "/programs")
    else:
        assert pr.status == 500 and "refused the purge" in pr.body.decode(), (pr.status, pr.body)


# ---------------------------------------------------------------- 13
def test_a_read_racing_a_writes_delete_does_not_keep_the_old_row(daemon, mock):
    """Readers hammer /record_views while another client writes to it: after
    each write's answer, no read may give the pre-write version.  A reader
    whose memory miss read the file's row while the write's delete ran (or
    before the row was voided) used to keep that row in memory, a HIT until
    its TTL."""
    s = Sdk(daemon.port)
    s.auth()
    stop = threading.Event()
    failures = []

    def hammer():
        h = Sdk(daemon.port)
        h.auth()
        while not stop.is_set():
            r = h.get("/record_views")
            if r.status != 200:
                failures.append(r)
                return

    readers = [threading.Thread(target=hammer) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(1, 301):
            w = s.post("/record_views", {"name": "x%d" % i})
            assert w.status == 200, w
            gen = mock.stats()["gens"]["record_views"]
            for _ in range(3):
                r = s.get("/record_views")
                assert r.status == 200, r
                assert "(gen %d)" % gen in r.body.decode(), \
                    "write %d: a version older than gen %d served (X-Cache %s): %r" % (
                        i, gen, xc(r), r.body[:80])
            assert not failures, failures
    finally:
        stop.set()
        for t in readers:
            t.join(15)
