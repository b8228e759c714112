"""Nobody waits for the API when kaleidod has something to serve:
- stale-while-revalidate: within the window after expiry the stale entry is
  served at once (X-Cache: STALE) and one background refresh per key
  brings it up to date; beyond the window the request goes upstream;
- stale-if-error: when the API fails, an expired entry is served up to the
  limit, and past it the client gets the error;
- warm-up: once authenticated, kaleidod fetches the three base lists
  itself, so the first client request is a HIT;
- refresh-ahead: a base list is refreshed (conditionally) shortly before it
  expires, so while in use it never expires.
"""

import time

import pytest

from harness import Sdk, get_stored, past, request, row, wait_for

BASE_LISTS = ("/programs", "/entity_slices", "/record_views")


def xc(r):
    return r.header("X-Cache")


def quick_get(s, target, timeout=3.0):
    """A GET that must be answered without waiting on the API."""
    return request(s.port, "GET", target, [("Content-Type", "application/json")] +
                   s.auth_headers(), timeout=timeout)


def first_not_hit(s, target, timeout=10):
    return wait_for(lambda: (lambda r: r if xc(r) != "HIT" else None)(quick_get(s, target)),
                    timeout=timeout, interval=0.1, what="the entry of %s to expire" % target)


def observe(seconds, fn, every=0.1):
    """Calls fn every `every` seconds for `seconds` of real time; the list of
    its results.  For properties that must hold throughout a period."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(fn())
        time.sleep(every)   # pacing the observation, not waiting for anything
    return out


# ---------------------------------------------------------------- SWR
def test_stale_while_revalidate_serves_at_once_and_refreshes_once(daemon_factory, mock):
    d = daemon_factory(mock, config={"family.programs": {"ttl": "1"},
                                     "cache": {"stale_while_revalidate": "30"}}).start()
    s = Sdk(d.port)
    a = get_stored(d, s, "/programs")
    assert xc(a) == "MISS" and b"(gen 1)" in a.body, a
    stored = row(d, "/programs", "stored_at")
    mock.call("POST", "/_mock/bump", {"families": ["programs"]})
    # From here every upstream GET /programs waits at the mock: an answer
    # that needed the API could not come back.
    mock.hold("/programs")
    try:
        r = first_not_hit(s, "/programs")
        assert r.status == 200 and xc(r) == "STALE", r
        assert r.body == a.body, "the stale entry was not what was served"
        wait_for(lambda: mock.stats()["held"] == 1, timeout=10,
                 what="the background refresh to reach the API")
        more = [quick_get(s, "/programs") for _ in range(10)]
        assert all(m.status == 200 and xc(m) == "STALE" and m.body == a.body
                   for m in more), more
        held, n = mock.stats()["held"], mock.count("GET /programs")
    finally:
        mock.release()
    assert (held, n) == (1, 2), "one refresh per key: %d held, %d GETs upstream" % (held, n)
    # The refresh's answer in the file (stored a second or more after the
    # first: it began after that one expired).  Counted before the next
    # GET, which may itself find the 1 s entry expired again and refresh.
    wait_for(lambda: (row(d, "/programs", "stored_at") or 0) > stored, timeout=10,
             what="the refreshed entry to be stored")
    assert mock.count("GET /programs") == 2
    fam = d.stats()["families"]["programs"]
    assert fam["refreshes"] == 1, fam
    assert fam["stale"] >= 11, fam
    fresh = quick_get(s, "/programs")
    assert fresh.status == 200 and xc(fresh) in ("HIT", "STALE"), fresh
    assert b"(gen 2)" in fresh.body, fresh


def test_beyond_the_swr_window_the_request_goes_upstream(daemon_factory, mock):
    d = daemon_factory(mock, config={"family.entity_slices": {"ttl": "1"},
                                     "cache": {"stale_while_revalidate": "1"}}).start()
    s = Sdk(d.port)
    assert xc(get_stored(d, s, "/entity_slices")) == "MISS"
    expires = row(d, "/entity_slices", "expires_at")
    wait_for(lambda: past(expires + 1), timeout=5, interval=0.05,
             what="ttl + window to pass")
    r = quick_get(s, "/entity_slices")
    assert r.status == 200 and xc(r) in ("MISS", "REVALIDATED"), r
    assert mock.count("GET /entity_slices") == 2
    assert d.stats()["families"]["entity_slices"]["refreshes"] == 0


# ---------------------------------------------------------------- stale-if-error
@pytest.mark.parametrize("failure", ["status503", "down"])
def test_stale_if_error_has_a_limit(daemon_factory, mock, failure):
    d = daemon_factory(mock, config={"family.programs": {"ttl": "1"},
                                     "cache": {"stale_while_revalidate": "0",
                                               "stale_if_error": "2"}}).start()
    s = Sdk(d.port)
    a = get_stored(d, s, "/programs")
    assert xc(a) == "MISS", a
    limit = row(d, "/programs", "expires_at") + 2
    if failure == "status503":
        mock.fault("/programs", "status", status=503)
    else:
        mock.stop()
    seen = []

    def past_limit():
        r = quick_get(s, "/programs", timeout=5)
        seen.append((round(time.time() - limit, 2), r.status, xc(r)))
        return r if r.status != 200 else None

    r = wait_for(past_limit, timeout=10, interval=0.1, what="the stale limit to pass")
    statuses = [(st, x) for _, st, x in seen]
    assert ("STALE" in [x for _, x in statuses]), "never served stale within the limit: %r" % seen
    first_stale = next(i for i, (_, x) in enumerate(statuses) if x == "STALE")
    assert all(x == "STALE" and st == 200 for st, x in statuses[first_stale:-1]), seen
    if failure == "status503":
        assert r.status == 503 and r.json()["detail"] == "injected fault", r
    else:
        assert r.status == 502, r
        e = r.json()
        assert e.get("error") and e.get("detail"), e
    # Answered after the daemon's clock reached the limit (times in seen
    # are seconds past it, taken when each answer came).
    assert seen[-1][0] >= -0.05, "the 2 s limit ended early: %r" % seen
    # And it stays an error: the stale entry is not served again.
    again = quick_get(s, "/programs", timeout=5)
    assert again.status == r.status, again


# ---------------------------------------------------------------- warm-up
def test_warm_up_fetches_the_base_lists_so_the_first_request_is_a_hit(daemon_factory, mock):
    d = daemon_factory(mock, config={"cache": {"refresh_ahead": "yes"}}).start()
    wait_for(lambda: d.stats()["cache"]["warm"] is True, timeout=15,
             what="stats cache.warm to turn true")
    counts = {p: mock.count("GET " + p) for p in BASE_LISTS}
    assert counts == {p: 1 for p in BASE_LISTS}, counts
    assert d.stats()["total"]["refreshes"] >= 3, d.stats()["total"]
    s = Sdk(d.port)
    got = {}
    for p in BASE_LISTS:
        r = s.get(p)
        assert r.status == 200 and xc(r) == "HIT", (p, r)
        got[p] = r.body
    assert {p: mock.count("GET " + p) for p in BASE_LISTS} == counts
    for p in BASE_LISTS:
        assert got[p] == mock.direct_get(p).body, p


def test_without_refresh_ahead_nothing_is_fetched_at_start(daemon_factory, mock):
    d = daemon_factory(mock, config={"cache": {"refresh_ahead": "no"}}).start()
    wait_for(lambda: d.health()["upstream"]["auth"]["state"] == "ok", timeout=15,
             what="kaleidod to authenticate")
    st = d.stats()
    assert st["cache"]["warm"] is False, st["cache"]
    assert st["total"]["refreshes"] == 0, st["total"]
    assert {p: mock.count("GET " + p) for p in BASE_LISTS} == {p: 0 for p in BASE_LISTS}
    assert xc(Sdk(d.port).get("/programs")) == "MISS"


# ---------------------------------------------------------------- refresh-ahead
@pytest.mark.slow
def test_refresh_ahead_keeps_a_base_list_fresh_while_in_use(daemon_factory, mock):
    # ttl 4 s: a refresh begins when 1 s (the minimum margin) is left.
    d = daemon_factory(mock, config={"cache": {"refresh_ahead": "yes"},
                                     "family.programs": {"ttl": "4"}}).start()
    wait_for(lambda: d.stats()["cache"]["warm"] is True, timeout=15, what="warm-up")
    s = Sdk(d.port)
    s.auth()
    seen = observe(5.5, lambda: (time.time(), xc(quick_get(s, "/programs"))))
    # No client ever waited for the API.  Whether a refresh also *ends*
    # before the copy expires depends on the machine's load, so a STALE
    # answer is allowed, but only with a refresh begun ahead of it.  Without
    # refresh-ahead, the refetch begins only after a client found the copy
    # stale, so the last fetch before a STALE answer is the one that made
    # the copy: more than ttl - 1 = 3 s earlier (expiry is counted in whole
    # seconds).  With it, a refresh began about 1 s before the expiry.
    assert "MISS" not in [x for _, x in seen], "a client waited for the API: %r" % seen
    fetches = [r["time"] for r in mock.requests("/programs") if r["method"] == "GET"]
    for t, x in seen:
        if x == "STALE":
            assert any(t - 3 < f < t for f in fetches), \
                "STALE at %.3f with no refresh begun ahead of it: %r" % (t, fetches)
    # It goes on with no client asking; each refresh asked whether the list
    # changed, and it had not.
    wait_for(lambda: mock.count("GET /programs") >= 3, timeout=15,
             what="a third fetch of /programs")
    assert mock.conditional("GET /programs") >= 2, mock.stats()["conditional"]
    assert mock.not_modified("GET /programs") >= 2, mock.stats()["not_modified"]
    assert d.stats()["families"]["programs"]["refreshes"] >= 3
    # The other base lists (ttl 300) were fetched once, at warm-up.
    assert mock.count("GET /entity_slices") == 1
    assert mock.count("GET /record_views") == 1
