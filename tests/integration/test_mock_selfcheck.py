"""The mock API itself behaves as the suite assumes (cheap, no daemon).

If these fail, every other result is meaningless.
"""

import json
import urllib.parse

import harness
from harness import request, wait_for


def token(mock, **form):
    body = urllib.parse.urlencode(form).encode()
    return request(mock.port, "POST", "/auth/oauth/token",
                   [("Content-Type", "application/x-www-form-urlencoded")], body)


def test_mock_tokens_and_bearer_check(mock):
    bad = token(mock, grant_type="client_credentials", client_id=mock.client_id,
                client_secret="wrong")
    assert bad.status == 401 and bad.json()["detail"] == "invalid client credentials"
    ok = token(mock, grant_type="client_credentials", client_id=mock.client_id,
               client_secret=mock.client_secret).json()
    assert set(ok) >= {"access_token", "refresh_token", "expires_in", "token_type"}
    assert request(mock.port, "GET", "/programs").status == 401
    r = request(mock.port, "GET", "/programs",
                [("X-Kal-Authorization", "Bearer " + ok["access_token"])])
    assert r.status == 200 and r.header("ETag") and r.header("Content-Length")
    ref = token(mock, grant_type="refresh_token", refresh_token=ok["refresh_token"])
    assert ref.status == 200 and ref.json()["access_token"] != ok["access_token"]
    mock.revoke()
    assert request(mock.port, "GET", "/programs",
                   [("Authorization", "Bearer " + ok["access_token"])]).status == 401
    st = mock.stats()
    assert st["token"] == {"client_credentials": 1, "refresh_token": 1, "rejected": 1}
    assert st["unauthorized"] == 2


def test_mock_generations_faults_hold_and_bodies(mock):
    auth = [("Authorization", "Bearer " + mock.grant())]
    a = request(mock.port, "GET", "/record_views?x=1", auth)
    assert "(gen 1)" in a.body.decode() and len(a.body) >= 65536
    assert request(mock.port, "PUT", "/record_views/abc/add_key_field", auth, b"{}").status == 200
    assert "(gen 2)" in request(mock.port, "GET", "/record_views", auth).body.decode()
    request(mock.port, "POST", "/push/imports", auth, b"{}")
    gens = mock.stats()["gens"]
    assert {k: gens[k] for k in ("programs", "entity_slices", "record_views")} == \
        {"programs": 1, "entity_slices": 2, "record_views": 3}, gens
    # An import may create fields too; the other lists stay as they were.
    assert (gens["key_fields"], gens["data_fields"], gens["activities"]) == (2, 2, 1), gens
    # The other lists: the echo, with their family and generation.
    r = request(mock.port, "GET", "/records/r1/operations?x=1", auth).json()
    assert (r["family"], r["gen"], r["target"]) == ("record_operations", 1,
                                                    "/records/r1/operations?x=1"), r
    assert "family" not in request(mock.port, "GET", "/workspaces/events", auth).json()
    request(mock.port, "PUT", "/operations/o1/records", auth, b"{}")
    gens = mock.stats()["gens"]
    assert (gens["records"], gens["record_operations"]) == (2, 2), gens

    body = bytes(range(256)) * 5000
    up = request(mock.port, "POST", "/records/x/values/file", auth + [("Content-Type", "a/b")],
                 [body[:1000], body[1000:]])  # chunked
    assert up.json()["md5"] == harness.md5_hex(body) and up.json()["received"] == len(body)

    ex = request(mock.port, "GET", "/records/export/csv?size=3000000", auth)
    assert len(ex.body) == 3000000 and harness.md5_hex(ex.body) == harness.export_md5(3000000)

    mock.fault("/programs", "status", status=503, times=1)
    assert request(mock.port, "GET", "/programs", auth).status == 503
    assert request(mock.port, "GET", "/programs", auth).status == 200

    mock.hold("/entity_slices")
    import threading
    res = []
    t = threading.Thread(target=lambda: res.append(
        request(mock.port, "GET", "/entity_slices", auth).status))
    t.start()
    wait_for(lambda: mock.stats()["held"] == 1, what="held == 1")
    mock.release()
    t.join(10)
    assert res == [200]

    echo = request(mock.port, "DELETE", "/odd//path?b=2&a=1", auth + [("X-Test", "1")]).json()
    assert echo["target"] == "/odd//path?b=2&a=1"
    assert ["X-Test", "1"] in echo["headers"]
    assert json.dumps(mock.requests("/odd"))


def test_mock_conditional_requests_validators_and_counts(mock):
    auth = [("Authorization", "Bearer " + mock.grant())]
    a = request(mock.port, "GET", "/programs", auth)
    etag, lm = a.header("ETag"), a.header("Last-Modified")
    assert a.status == 200 and etag and lm, a

    def get(*hdrs):
        return request(mock.port, "GET", "/programs", auth + list(hdrs))

    r = get(("If-None-Match", etag))
    assert r.status == 304 and r.body == b"" and r.header("ETag") == etag, r
    assert get(("If-None-Match", '"other", W/' + etag)).status == 304
    assert get(("If-None-Match", '"other"'), ("If-Modified-Since", lm)).status == 200, \
        "If-None-Match decides when present"
    assert get(("If-Modified-Since", lm)).status == 304
    assert get(("If-Modified-Since", "Thu, 01 Jan 1998 00:00:00 GMT")).status == 200
    assert get(("If-Modified-Since", "not a date")).status == 200
    st = mock.stats()
    assert st["conditional"]["GET /programs"] == 6, st
    assert st["not_modified"]["GET /programs"] == 3, st
    assert st["counts"]["GET /programs"] == 7, st

    # A write moves Last-Modified to a later second: the old date no longer matches.
    mock.call("POST", "/_mock/bump", {"families": ["programs"]})
    b = get()
    assert b.header("ETag") != etag and b.header("Last-Modified") != lm, b
    assert get(("If-Modified-Since", lm)).status == 200
    assert get(("If-None-Match", etag)).status == 200

    # Headers of family answers, on 200 and 304 alike.
    mock.config(extra_headers=[["X-Kal-Version", "7"]], cache_control="max-age=9",
                send_etag=False)
    c = get()
    assert c.header("ETag") is None and c.header("X-Kal-Version") == "7", c
    assert c.header("Cache-Control") == "max-age=9", c
    n = get(("If-Modified-Since", c.header("Last-Modified")))
    assert n.status == 304 and n.header("X-Kal-Version") == "7", n
    assert n.header("Cache-Control") == "max-age=9", n
    assert get(("If-None-Match", b.header("ETag"))).status == 200, "no ETag, no match"
    mock.config(send_last_modified=False)
    assert get().header("Last-Modified") is None
    assert get(("If-Modified-Since", c.header("Last-Modified"))).status == 200


def test_mock_fault_wait_holds_then_fails(mock):
    import threading
    auth = [("Authorization", "Bearer " + mock.grant())]
    mock.fault("/entity_slices", "status", status=503, times=1, wait=True)
    res = []
    t = threading.Thread(target=lambda: res.append(
        request(mock.port, "GET", "/entity_slices", auth).status))
    t.start()
    wait_for(lambda: mock.stats()["held"] == 1, what="held == 1")
    assert not res
    mock.release()
    t.join(10)
    assert res == [503]
    assert request(mock.port, "GET", "/entity_slices", auth).status == 200
