"""Issue 10: the API is protected from bursts.  At most [upstream]
max_concurrent requests are out to it at once, the rest wait their turn in
a bounded queue (coalescing still works across it, hits never wait), and a
full queue is answered 503 with Retry-After at once.  A 429 pauses the
request's family (or everything, for a request in none) for its
Retry-After: stale copies stand in, the rest get 429 without reaching the
API, and afterwards requests leave at a bounded pace.
"""

import email.utils
import threading
import time

import pytest

from harness import Sdk, open_request, request, wait_for

SLOTS, QUEUE = 32, 400  # max_concurrent's default, and a queue for 400 of the 500


def fire(port, headers, targets, timeout=60):
    """GETs every target at once, each on its own connection; returns the
    threads and the list their answers land in (target, answer)."""
    out, lock = [], threading.Lock()

    def one(t):
        r = request(port, "GET", t, headers, timeout=timeout)
        with lock:
            out.append((t, r))

    threads = [threading.Thread(target=one, args=(t,)) for t in targets]
    for th in threads:
        th.start()
    return threads, out


def test_burst_is_capped_queued_and_refused_beyond_the_queue(daemon_factory, mock):
    d = daemon_factory(mock, config={"upstream": {"max_concurrent": str(SLOTS),
                                                  "max_queued": str(QUEUE)}}).start()
    s = Sdk(d.port)
    assert s.get("/programs").header("X-Cache") == "MISS"
    mock.hold("/workspaces/events")
    mock.call("DELETE", "/_mock/peak")
    n = 500
    threads, out = fire(d.port, s.auth_headers(), ["/workspaces/events?i=%d" % i
                                                   for i in range(n)])
    # The overflow is refused at once, while the others wait.
    wait_for(lambda: len(out) == n - SLOTS - QUEUE, timeout=60,
             what="the requests beyond the queue refused")
    for t, r in out:
        assert r.status == 503, (t, r)
        assert r.header("Retry-After") == "1", r
        assert r.json()["error"] == "upstream busy", r
    wait_for(lambda: mock.stats()["held"] == SLOTS, timeout=30,
             what="max_concurrent requests at the API")
    up = d.stats()["upstream"]
    assert (up["running"], up["queued"], up["refused_busy"]) == (SLOTS, QUEUE, n - SLOTS - QUEUE), up
    st = mock.stats()
    # Never more than max_concurrent at the API at once (nothing has ended
    # since the peak was reset, so the peak is exact).
    assert st["held"] == SLOTS and st["inflight_peak"] == SLOTS, st
    # Hits are answered meanwhile, and a miss of a cached list joins the queue.
    r = s.get("/programs")
    assert (r.status, r.header("X-Cache")) == (200, "HIT"), r
    mock.release()
    for th in threads:
        th.join(60)
    codes = sorted(r.status for _, r in out)
    assert codes == [200] * (SLOTS + QUEUE) + [503] * (n - SLOTS - QUEUE), codes
    assert mock.count("GET /workspaces/events") == SLOTS + QUEUE
    up = d.stats()["upstream"]
    assert (up["running"], up["queued"]) == (0, 0), up


def test_coalesced_misses_take_one_slot(daemon_factory, mock):
    d = daemon_factory(mock, config={"upstream": {"max_concurrent": "1",
                                                  "max_queued": "1"}}).start()
    s = Sdk(d.port)
    mock.hold("/workspaces/events")
    busy, busy_out = fire(d.port, s.auth_headers(), ["/workspaces/events?slot"])
    wait_for(lambda: mock.stats()["held"] == 1, what="the one slot taken")
    # Fifty clients want the same list: one fetch, in the one queue place.
    threads, out = fire(d.port, s.auth_headers(), ["/key_fields"] * 50)
    wait_for(lambda: d.stats()["upstream"]["queued"] == 1, what="the fetch queued")
    wait_for(lambda: d.stats()["families"]["key_fields"]["coalesced"] == 49, timeout=30,
             what="the other 49 waiting for that fetch")
    mock.release()
    for th in threads + busy:
        th.join(60)
    assert [r.status for _, r in out] == [200] * 50, out
    assert busy_out[0][1].status == 200
    assert mock.count("GET /key_fields") == 1
    assert d.stats()["upstream"]["refused_busy"] == 0


def test_a_queued_request_gives_up_after_the_timeout(daemon_factory, mock):
    # The one slot is taken by a large export whose client stopped reading:
    # it makes no progress, and that is the client's doing, not the API's,
    # so it keeps its slot; a request queued behind it gives up after
    # [upstream] timeout with a 503, and is never sent.
    d = daemon_factory(mock, config={"upstream": {"max_concurrent": "1", "timeout": "1"}}
                       ).start()
    s = Sdk(d.port)
    conn, resp = open_request(d.port, "GET", "/records/export/csv?size=%d" % (256 << 20),
                              s.auth_headers(), timeout=30)
    try:
        assert resp.status == 200
        assert len(resp.read(1 << 16)) == 1 << 16
        r = s.get("/workspaces/events?b")
        assert r.status == 503, r
        assert "max_concurrent" in r.json()["detail"], r
        assert r.header("Retry-After") == "1", r
        assert mock.count("GET /workspaces/events") == 0
    finally:
        conn.close()
    # With the slot free again, the next one goes through.
    wait_for(lambda: d.stats()["upstream"]["running"] == 0, timeout=30,
             what="the abandoned export to end")
    assert s.get("/workspaces/events?c").status == 200


# ---- 429: the API asks for a pause -----------------------------------------

def raw_429(retry_after):
    body = '{"detail": "slow down"}'
    return ("HTTP/1.1 429 Too Many Requests\r\nRetry-After: %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n"
            "Connection: close\r\n\r\n%s" % (retry_after, len(body), body))


def test_429_pauses_its_family_and_stale_copies_stand_in(daemon_factory, mock):
    d = daemon_factory(mock, config={"family.programs": {"ttl": "1"},
                                     "cache": {"stale_while_revalidate": "0"}}).start()
    s = Sdk(d.port)
    first = s.get("/programs")
    assert first.header("X-Cache") == "MISS"
    mock.fault("/programs", "raw", raw=raw_429("30"), method="GET", times=1)
    # Once the entry expires, its refetch meets the 429: the stored copy
    # answers instead.
    answers = []
    wait_for(lambda: answers.append(s.get("/programs")) or
             answers[-1].header("X-Cache") != "HIT", timeout=10, what="the entry to expire")
    r = answers[-1]
    assert (r.status, r.header("X-Cache")) == (200, "STALE"), r
    assert r.body == first.body
    assert mock.count("GET /programs") == 2
    # For the pause, the family is not asked again: the copy answers.
    for _ in range(3):
        r = s.get("/programs")
        assert (r.status, r.header("X-Cache")) == (200, "STALE"), r
    assert mock.count("GET /programs") == 2
    # Other families are not paused.
    r = s.get("/entity_slices")
    assert (r.status, r.header("X-Cache")) == (200, "MISS"), r
    up = d.stats()["upstream"]
    assert up["throttled"] == 1 and up["refused_throttled"] >= 3, up


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_429_without_a_copy_is_passed_on_then_answered_locally(daemon, mock, form):
    s = Sdk(daemon.port)
    assert s.get("/programs").header("X-Cache") == "MISS"
    ra = "40" if form == "seconds" else \
        email.utils.formatdate(time.time() + 40, usegmt=True)
    mock.fault("/workspaces/events", "raw", raw=raw_429(ra), times=1)
    r = s.get("/workspaces/events?page=1")
    assert r.status == 429 and r.header("Retry-After") == ra, r  # the API's own
    # A request in no family paused everything that would reach the API ...
    for target in ("/workspaces/events?page=2", "/key_fields", "/records/r1"):
        r = s.get(target)
        assert r.status == 429, (target, r)
        assert r.json()["error"] == "rate limited", r
        assert 1 <= int(r.header("Retry-After")) <= 41, r
    assert mock.count("GET /workspaces/events") == 1
    assert mock.count("GET /key_fields") == 0
    # ... but hits are still answered.
    r = s.get("/programs")
    assert (r.status, r.header("X-Cache")) == (200, "HIT"), r


def test_after_a_pause_requests_are_released_at_a_bounded_pace(daemon_factory, mock):
    # max_concurrent 4: one request a second for 10 s after a pause.
    d = daemon_factory(mock, config={"upstream": {"max_concurrent": "4"}}).start()
    s = Sdk(d.port)
    assert s.get("/workspaces/events?page=0").status == 200
    mock.fault("/workspaces/events", "raw", raw=raw_429("1"), times=1)
    assert s.get("/workspaces/events?page=1").status == 429
    wait_for(lambda: s.get("/workspaces/events?probe").status == 200, timeout=10,
             what="the 1 s pause to end")
    # Five at once right after it: not five calls at once.
    threads, out = fire(d.port, s.auth_headers(),
                        ["/workspaces/events?burst=%d" % i for i in range(5)])
    for th in threads:
        th.join(60)
    assert sorted(r.status for _, r in out) == [200] * 5, out
    assert d.stats()["upstream"]["paced"] >= 1
