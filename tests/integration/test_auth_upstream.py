"""kaleidod holds one upstream token for every local client: one grant
serves many SDK sessions, it is refreshed before it expires, a 401 leads to
one re-authentication and one replay, and rejected credentials leave the
daemon running, explaining itself, and recovering on its own.
"""

import threading

from harness import CLIENT_SECRET, Sdk, wait_for


def test_one_upstream_grant_for_100_requests_from_10_concurrent_sdk_clients(daemon, mock):
    results, errors = [], []
    lock = threading.Lock()

    def client(i):
        try:
            s = Sdk(daemon.port, "kalpy" if i % 2 else "kalbio")
            s.auth()
            for j in range(10):
                r = s.get("/activities?client=%d&n=%d" % (i, j))
                with lock:
                    results.append(r.status)
        except Exception as e:  # reported below, with the others
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == [200] * 100, results
    st = mock.stats()
    assert st["counts"].get("GET /activities") == 100, st["counts"]
    assert st["token"]["client_credentials"] == 1, st["token"]
    assert st["unauthorized"] == 0
    ds = daemon.stats()
    assert ds["total"]["local_grants"] == 10, ds
    assert ds["upstream"]["token_grants"] == 1, ds


def test_token_refreshed_before_expiry_without_any_401(mock_factory, daemon_factory):
    # A 10 s token is refreshed 1 s before it ends (10 %): the margin for
    # the refresh's round trip and a GET already on its way with the old
    # token, which a 4 s token's 0.4 s did not always leave under load.
    m = mock_factory("--expires-in", "10")
    d = daemon_factory(m).start()
    s = Sdk(d.port)
    statuses = []

    def refreshed():
        statuses.append(s.get("/workspaces/active").status)
        return m.stats()["token"]["refresh_token"] >= 1

    wait_for(refreshed, timeout=25, interval=0.1, what="a refresh_token grant upstream")
    assert set(statuses) == {200}, statuses
    st = m.stats()
    assert st["unauthorized"] == 0, st
    assert st["token"]["client_credentials"] == 1, st["token"]
    grants = m.tokens()["grants"]
    first, refresh = grants[0], next(g for g in grants if g["grant"] == "refresh_token")
    assert first["grant"] == "client_credentials"
    assert refresh["t"] - first["t"] < first["expires_in"], grants
    assert d.stats()["upstream"]["token_refreshes"] >= 1


def test_upstream_401_reauthenticates_and_replays_once(daemon, mock):
    s = Sdk(daemon.port)
    assert s.get("/activities/warmup").status == 200
    old = mock.tokens()["access"][-1]
    mock.revoke()
    body = b'{"activity_name": "replayed", "n": 1}'
    r = s.post("/activities?src=test", body=body)
    assert r.status == 200, r
    assert r.json()["md5"] is not None and r.json()["received"] == len(body)
    seen = [q for q in mock.requests("/activities") if q["method"] == "POST"]
    assert len(seen) == 2, seen
    assert [q["target"] for q in seen] == ["/activities?src=test"] * 2
    assert [q["body_len"] for q in seen] == [len(body)] * 2
    auths = [dict((k.lower(), v) for k, v in q["headers"])["authorization"] for q in seen]
    assert auths[0] == "Bearer " + old and auths[1] != auths[0], auths
    st = mock.stats()
    assert st["unauthorized"] == 1, st
    assert st["token"]["client_credentials"] + st["token"]["refresh_token"] == 2, st["token"]
    assert daemon.stats()["upstream"]["replayed_401"] == 1


def test_upstream_401_on_a_streamed_body_is_not_replayed(daemon, mock):
    # Bodies over max_buffered_body (1 MiB by default) are streamed, so they
    # cannot be sent twice; the client sees the 401 and the next call works.
    s = Sdk(daemon.port)
    assert s.get("/activities/warmup").status == 200
    mock.revoke()
    big = b"x" * (2 << 20)
    r = s.post("/records/r1/values/file", body=big)
    assert r.status == 401, r
    assert mock.count("POST /records/r1/values/file") == 1
    assert s.get("/activities/after").status == 200


def test_upstream_401_twice_is_not_replayed_forever(daemon, mock):
    s = Sdk(daemon.port)
    assert s.get("/activities/warmup").status == 200
    mock.fault("/activities/always401", "status", status=401)
    r = s.get("/activities/always401")
    assert r.status == 401, r
    # The first attempt and two replays (the second tells a refusing
    # endpoint from a token revoked twice in a row); then never again.
    assert mock.count("GET /activities/always401") == 3
    r = s.get("/activities/always401")
    assert r.status == 401, r
    assert mock.count("GET /activities/always401") == 4


def test_auth_failure_answers_502_json_explaining_why(mock_factory, daemon_factory):
    m = mock_factory(client_secret="the-real-secret-differs")
    d = daemon_factory(m).start()
    wait_for(lambda: d.health()["upstream"]["auth"]["state"] == "failing", timeout=10,
             what="auth state failing")
    r = Sdk(d.port).get("/activities")
    assert r.status == 502, r
    e = r.json()
    assert e.get("error") and e.get("detail"), e
    text = r.body.decode().lower()
    assert "authenticat" in text, e
    assert "401" in text or "invalid client credentials" in text, e
    assert CLIENT_SECRET not in r.body.decode()


def test_rejected_credentials_keep_daemon_up_then_it_recovers_by_itself(
        mock_factory, daemon_factory):
    m = mock_factory(client_secret="rotated-secret")
    d = daemon_factory(m).start()
    h = wait_for(lambda: (lambda h: h if h["upstream"]["auth"]["state"] == "failing" else None)(
        d.health()), timeout=10, what="auth state failing")
    assert h["status"] == "degraded", h
    assert h["upstream"]["auth"]["last_error"], h
    assert h["upstream"]["auth"]["failing_since"], h
    assert h["upstream"]["url"] == m.url, h
    assert CLIENT_SECRET not in str(h)
    # Local clients still get tokens while upstream auth fails.
    Sdk(d.port).auth()
    rejected = m.stats()["token"]["rejected"]
    wait_for(lambda: m.stats()["token"]["rejected"] > rejected, timeout=10,
             what="another (backed-off) attempt")
    m.config(client_secret=CLIENT_SECRET)
    h = wait_for(lambda: (lambda h: h if h["upstream"]["auth"]["state"] == "ok" else None)(
        d.health()), timeout=15, what="auth state ok after the secret was fixed")
    assert h["status"] == "ok", h
    assert Sdk(d.port).get("/activities").status == 200


def test_cache_still_served_while_credentials_rejected(mock_factory, daemon_factory):
    m = mock_factory()
    d = daemon_factory(m).start()
    s = Sdk(d.port)
    first = s.get("/programs")
    assert first.status == 200, first
    d.stop()
    m.config(client_secret="rotated-secret")
    m.revoke()
    d.start()
    wait_for(lambda: d.health()["upstream"]["auth"]["state"] == "failing", timeout=10,
             what="auth state failing")
    r = Sdk(d.port).get("/programs")
    assert r.status == 200, r
    assert r.header("X-Cache") in ("HIT", "STALE"), r
    assert r.body == first.body


def test_without_credentials_says_what_to_set_and_never_asks(mock, daemon_factory):
    d = daemon_factory(mock, secret=None).start()
    h = d.health()
    assert h["upstream"]["auth"]["state"] == "failing", h
    assert "KALEIDOSCOPE_API_CLIENT_SECRET" in h["upstream"]["auth"]["last_error"], h
    r = Sdk(d.port).get("/activities")
    assert r.status == 502, r
    assert "KALEIDOSCOPE_API_CLIENT_SECRET" in r.json()["detail"], r.json()
    assert mock.stats()["token"]["client_credentials"] == 0
    assert mock.count("POST /auth/oauth/token") == 0
    assert "no API client credentials" in d.log()
