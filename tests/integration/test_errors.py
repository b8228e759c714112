"""When the API is down, slow or failing: a stale cache entry is served
(X-Cache: STALE, Warning: 110); without one, kaleidod answers 502 or 504
with a JSON body {"error", "detail"} that names the upstream and the cause.
"""

from harness import Sdk, wait_for


def xc(r):
    return r.header("X-Cache")


def check_error_body(r, status, upstream_port, *causes):
    assert r.status == status, r
    assert "json" in (r.header("Content-Type") or ""), r
    e = r.json()
    assert isinstance(e.get("error"), str) and e["error"], e
    assert isinstance(e.get("detail"), str) and e["detail"], e
    text = r.body.decode().lower()
    assert "127.0.0.1:%d" % upstream_port in text, "upstream URL not named: %r" % e
    assert any(c in text for c in causes), "cause (%s) not named: %r" % ("|".join(causes), e)
    return e


def test_unreachable_upstream_gives_502_naming_url_and_cause(daemon_factory, closed_port):
    d = daemon_factory("http://127.0.0.1:%d" % closed_port).start()
    r = Sdk(d.port).get("/activities")
    check_error_body(r, 502, closed_port, "refused", "connect", "unreachable")
    r = Sdk(d.port).get("/programs")
    check_error_body(r, 502, closed_port, "refused", "connect", "unreachable")
    assert d.stats()["total"]["upstream_errors"] >= 2


def test_upstream_reset_gives_502(daemon, mock):
    s = Sdk(daemon.port)
    assert s.get("/activities/warm").status == 200
    mock.fault("/activities/boom", "reset")
    check_error_body(s.get("/activities/boom"), 502, mock.port, "reset", "connect", "closed",
                     "recv", "empty")


def test_slow_upstream_gives_504_after_timeout(daemon_factory, mock):
    d = daemon_factory(mock, config={"upstream": {"timeout": "1"}}).start()
    s = Sdk(d.port)
    assert s.get("/activities/warm").status == 200
    # Held at the API until the test lets go: the API never answers, so
    # the 504 is kaleidod's own, and its detail names the 1 s it waited.
    mock.hold("/activities/slow")
    try:
        r = s.get("/activities/slow")
        wait_for(lambda: mock.stats()["held"] == 1, timeout=10,
                 what="the request to be the one held at the API")
    finally:
        mock.release()
    check_error_body(r, 504, mock.port, "timeout", "timed out")
    assert "within 1 s" in r.json()["detail"], r


def test_upstream_5xx_without_stale_entry_passed_through(daemon, mock):
    mock.fault("/programs", "status", status=503)
    r = Sdk(daemon.port).get("/programs")
    assert r.status == 503, r
    assert r.json()["detail"] == "injected fault"


# Stale-while-revalidate would serve an expired entry as STALE whatever the
# API does; these tests are about the API failing, so it is off.
NO_SWR = {"stale_while_revalidate": "0"}


def prime(d, target):
    """GETs target into the cache (the test sets ttl = 1 s); returns the body.
    Once the entry is older than its TTL and the API fails, it turns STALE."""
    a = Sdk(d.port).get(target)
    assert a.status == 200 and xc(a) == "MISS", a
    return a.body


def wait_stale(d, target):
    s = Sdk(d.port)
    return wait_for(lambda: (lambda r: r if xc(r) == "STALE" else None)(s.get(target)),
                    timeout=10, interval=0.1, what="X-Cache: STALE for " + target)


def check_stale(r, body):
    assert r.status == 200, r
    assert r.body == body
    w = r.header("Warning") or ""
    assert w.startswith("110"), "no Warning: 110 on a stale answer: %r" % (r,)
    assert r.header("Age") is not None, r


def test_5xx_with_stale_entry_serves_stale(daemon_factory, mock):
    d = daemon_factory(mock, config={"family.programs": {"ttl": "1"}, "cache": NO_SWR}).start()
    body = prime(d, "/programs")
    mock.fault("/programs", "status", status=503)
    check_stale(wait_stale(d, "/programs"), body)
    assert d.stats()["families"]["programs"]["stale"] >= 1


def test_api_down_with_stale_entry_serves_stale(daemon_factory, mock):
    d = daemon_factory(mock, config={"family.record_views": {"ttl": "1"},
                                     "cache": NO_SWR}).start()
    body = prime(d, "/record_views?x=1")
    mock.stop()
    check_stale(wait_stale(d, "/record_views?x=1"), body)


def test_timeout_with_stale_entry_serves_stale(daemon_factory, mock):
    d = daemon_factory(mock, config={"upstream": {"timeout": "1"},
                                     "family.entity_slices": {"ttl": "1"},
                                     "cache": NO_SWR}).start()
    body = prime(d, "/entity_slices")
    mock.fault("/entity_slices", "slow", delay_ms=4000)
    check_stale(wait_stale(d, "/entity_slices"), body)


def test_fresh_answer_replaces_stale_once_api_recovers(daemon_factory, mock):
    d = daemon_factory(mock, config={"family.programs": {"ttl": "1"}, "cache": NO_SWR}).start()
    prime(d, "/programs")
    mock.fault("/programs", "status", status=502)
    wait_stale(d, "/programs")
    mock.clear_faults()
    # The API's answer: a new body (MISS) or a 304 for the one kept (REVALIDATED).
    r = wait_for(lambda: (lambda r: r if xc(r) in ("MISS", "REVALIDATED") else None)(
        Sdk(d.port).get("/programs")), timeout=10, interval=0.1,
        what="an answer from the API after it recovered")
    assert r.status == 200 and r.header("Warning") is None, r
