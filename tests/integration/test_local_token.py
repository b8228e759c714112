"""kaleidod answers POST /auth/oauth/token itself, with its own tokens.

An SDK pointed at kaleidod authenticates against it: the answer has the
shape of the API's, costs no upstream round trip, and the tokens it hands
out are never the upstream ones.
"""

import json
import urllib.parse

from harness import Sdk, request, wait_for

FORM = [("Content-Type", "application/x-www-form-urlencoded")]
JSON = [("Content-Type", "application/json")]


def form(**kw):
    return urllib.parse.urlencode(kw).encode()


def token_upstream_calls(mock):
    return mock.count("POST /auth/oauth/token")


def check_token_answer(r):
    assert r.status == 200, r
    assert "json" in (r.header("Content-Type") or ""), r
    t = r.json()
    assert isinstance(t.get("access_token"), str) and len(t["access_token"]) >= 20, t
    assert isinstance(t.get("refresh_token"), str) and t["refresh_token"], t
    assert isinstance(t.get("expires_in"), int) and t["expires_in"] > 0, t
    assert str(t.get("token_type", "")).lower() == "bearer", t
    return t


def test_client_credentials_form_grant_is_answered_locally(daemon, mock):
    # kaleidod's own first grant must be in before counting, or it would
    # look like the local grant's.
    wait_for(lambda: daemon.health()["upstream"]["auth"]["state"] == "ok", timeout=15,
             what="kaleidod's own upstream grant")
    before = token_upstream_calls(mock)
    r = request(daemon.port, "POST", "/auth/oauth/token", FORM,
                form(grant_type="client_credentials", client_id="demo-client",
                     client_secret="whatever"))
    t = check_token_answer(r)
    assert token_upstream_calls(mock) == before, "the local grant went upstream"
    issued = mock.tokens()
    assert t["access_token"] not in issued["access"], "local token is an upstream token"
    assert t["refresh_token"] not in issued["refresh"], "local refresh token is an upstream one"
    assert daemon.stats()["total"]["local_grants"] == 1


def test_client_credentials_json_grant_is_answered_locally(daemon, mock):
    body = json.dumps({"grant_type": "client_credentials", "client_id": "demo-client",
                       "client_secret": "x"}).encode()
    check_token_answer(request(daemon.port, "POST", "/auth/oauth/token", JSON, body))


def test_refresh_token_grant_gives_a_new_local_token(daemon):
    first = check_token_answer(request(
        daemon.port, "POST", "/auth/oauth/token", FORM,
        form(grant_type="client_credentials", client_id="a", client_secret="b")))
    second = check_token_answer(request(
        daemon.port, "POST", "/auth/oauth/token", FORM,
        form(grant_type="refresh_token", refresh_token=first["refresh_token"])))
    assert second["access_token"] != first["access_token"]


def test_any_client_id_and_secret_accepted_on_loopback(daemon, mock):
    for cid, sec in (("someone-else", "not-the-secret"), ("", "")):
        t = check_token_answer(request(
            daemon.port, "POST", "/auth/oauth/token", FORM,
            form(grant_type="client_credentials", client_id=cid, client_secret=sec)))
        assert t["access_token"] not in mock.tokens()["access"]


def test_each_grant_is_a_distinct_token(daemon):
    seen = {Sdk(daemon.port).auth()["access_token"] for _ in range(5)}
    assert len(seen) == 5


def test_unknown_grant_type_is_a_client_error(daemon):
    r = request(daemon.port, "POST", "/auth/oauth/token", FORM,
                form(grant_type="password", username="u", password="p"))
    assert 400 <= r.status < 500, r


def test_local_token_lets_both_sdk_flavours_through(daemon, mock):
    for flavour in ("kalpy", "kalbio"):
        s = Sdk(daemon.port, flavour)
        s.auth()
        r = s.get("/workspaces/active")
        assert r.status == 200, (flavour, r)
        seen = dict((k.lower(), v) for k, v in r.json()["headers"])
        up = mock.tokens()["access"]
        for h in ("authorization", "x-kal-authorization"):
            assert seen.get(h, "").startswith("Bearer "), (h, seen)
            assert seen[h][7:] in up, "%s upstream is not an upstream token" % h
            assert s.access_token not in seen[h]


def test_local_token_lifetime_follows_config(daemon_factory, mock):
    d = daemon_factory(mock, config={"server": {"token_lifetime": "123"}}).start()
    assert Sdk(d.port).auth()["expires_in"] == 123
