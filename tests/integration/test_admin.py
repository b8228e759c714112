"""The admin routes report what the daemon is doing: /_kaleidod/health
(status, upstream URL and token state, cache file and size) and
/_kaleidod/stats (request, cache and upstream counters)."""

from harness import Sdk, wait_for


def test_health_reports_upstream_auth_and_cache(daemon, mock):
    Sdk(daemon.port).get("/programs")
    r = daemon.get("/_kaleidod/health")
    assert r.status == 200, r
    # The answer reaches the file on the keeper's thread, after the client
    # has it: wait for both the token and the row.
    h = wait_for(lambda: (lambda h: h if h["upstream"]["auth"]["state"] == "ok" and
                          h["cache"]["entries"] >= 1 else None)(daemon.health()),
                 timeout=10, what="auth ok and the answer in the file")
    assert h["status"] == "ok", h
    assert h["upstream"]["url"] == mock.url, h
    auth = h["upstream"]["auth"]
    assert 0 < auth["expires_in"] <= 3600, auth
    assert not auth.get("last_error"), auth
    assert h["cache"]["file"] == daemon.cache_file, h
    assert h["cache"]["entries"] >= 1 and h["cache"]["bytes"] > 0, h


def test_stats_count_requests_hits_misses_and_upstream(daemon, mock):
    s = Sdk(daemon.port)
    s.get("/programs")
    s.get("/programs")
    s.get("/record_views")
    s.get("/workspaces/events")  # in no family: forwarded, neither hit nor miss
    st = daemon.stats()
    t = st["total"]
    for k in ("requests", "hits", "misses", "stale", "bypass", "upstream_errors",
              "invalidations", "local_grants", "forwarded"):
        assert isinstance(t.get(k), int), (k, st)
    assert set(st["families"]) >= {"programs", "entity_slices", "record_views"}, st
    assert st["families"]["programs"]["hits"] == 1
    assert st["families"]["programs"]["misses"] == 1
    assert st["families"]["record_views"]["misses"] == 1
    assert t["hits"] == 1 and t["misses"] == 2, t
    assert t["local_grants"] == 1, t
    assert t["forwarded"] == 3, "forwarded counts requests sent upstream: %r" % t
    for k in ("token_grants", "token_refreshes", "token_failures", "replayed_401", "retried",
              "not_retried", "running", "queued", "refused_busy", "throttled",
              "refused_throttled"):
        assert isinstance(st["upstream"].get(k), int), (k, st)
    assert st["upstream"]["token_grants"] == 1, st
