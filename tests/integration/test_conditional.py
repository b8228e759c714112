"""Requests the cache answers by itself, without the API:
- If-None-Match matching the entry's ETag: 304 (X-Cache: HIT, ETag, no body);
- Cache-Control: only-if-cached: the entry when there is one, else 504 JSON;
- HEAD: the GET's headers and Content-Length, no body;
- Accept-Encoding: gzip: the entry gzip-compressed (Vary: Accept-Encoding),
  the identity body to everyone else;
and the client headers that make kaleidod go around the cache (BYPASS).
"""

import gzip
import json

import pytest

from harness import Sdk
from test_robustness import RawConn, bearer, hget


def xc(r):
    return r.header("X-Cache")


def raw_get(target, headers=(), method="GET"):
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: 127.0.0.1",
             "Authorization: %s" % bearer()]
    lines += ["%s: %s" % kv for kv in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def prime(s, target):
    a = s.get(target)
    assert a.status == 200 and xc(a) == "MISS", a
    b = s.get(target)
    assert xc(b) == "HIT", b
    return a


@pytest.mark.parametrize("inm", ["{etag}", '"not-it", {etag}'])
def test_if_none_match_answered_304_from_the_cache(daemon, mock, inm):
    s = Sdk(daemon.port)
    a = prime(s, "/record_views")
    etag = a.header("ETag")
    c = RawConn(daemon.port)
    try:
        c.send(raw_get("/record_views", [("If-None-Match", inm.format(etag=etag))]))
        status, headers, body = c.read_response()
        assert status == 304, (status, headers)
        assert hget(headers, "X-Cache") == "HIT", headers
        assert hget(headers, "ETag") == etag, headers
        assert body == b""
        # Nothing followed the 304 on this connection: the next answer parses.
        c.send(raw_get("/record_views"))
        status, headers, body = c.read_response()
        assert status == 200 and body == a.body, (status, headers)
    finally:
        c.close()
    assert mock.count("GET /record_views") == 1
    assert mock.conditional("GET /record_views") == 0, "the 304 came from the API"


def test_if_none_match_not_matching_gets_the_whole_entry(daemon, mock):
    s = Sdk(daemon.port)
    a = prime(s, "/programs")
    r = s.get("/programs", headers=[("If-None-Match", '"some-other-version"')])
    assert r.status == 200 and xc(r) == "HIT" and r.body == a.body, r
    assert mock.count("GET /programs") == 1


def test_only_if_cached_without_entry_is_504_json_and_never_asks_the_api(daemon, mock):
    s = Sdk(daemon.port)
    r = s.get("/entity_slices", headers=[("Cache-Control", "only-if-cached")])
    assert r.status == 504, r
    assert "json" in (r.header("Content-Type") or ""), r
    e = r.json()
    for k in ("error", "detail", "upstream"):
        assert k in e, (k, e)
    assert isinstance(e["error"], str) and e["error"] and e["detail"], e
    assert mock.count("GET /entity_slices") == 0
    a = s.get("/entity_slices")
    assert xc(a) == "MISS", a
    h = s.get("/entity_slices", headers=[("Cache-Control", "only-if-cached")])
    assert h.status == 200 and xc(h) == "HIT" and h.body == a.body, h
    assert mock.count("GET /entity_slices") == 1


def test_head_of_a_cached_entry_served_from_the_cache(daemon, mock):
    s = Sdk(daemon.port)
    a = prime(s, "/record_views?v=2")
    c = RawConn(daemon.port)
    try:
        c.send(raw_get("/record_views?v=2", method="HEAD"))
        status, headers, _ = c.read_response("HEAD")
        assert status == 200, (status, headers)
        assert hget(headers, "X-Cache") == "HIT", headers
        assert int(hget(headers, "Content-Length")) == len(a.body), headers
        assert hget(headers, "ETag") == a.header("ETag"), headers
        assert (hget(headers, "Content-Type") or "").startswith("application/json"), headers
        # No body was sent after the HEAD answer: the next answer parses.
        c.send(raw_get("/activities/after-head"))
        status, _, body = c.read_response()
        assert status == 200 and json.loads(body)["target"] == "/activities/after-head"
    finally:
        c.close()
    counts = mock.stats()["counts"]
    assert counts.get("HEAD /record_views", 0) == 0, counts
    assert counts.get("GET /record_views") == 1, counts


@pytest.mark.parametrize("accept", ["gzip", "gzip, deflate", "br;q=1.0, gzip;q=0.8, *;q=0.1"])
def test_gzip_client_gets_the_cached_entry_compressed(daemon, mock, accept):
    s = Sdk(daemon.port)
    a = prime(s, "/record_views")
    assert len(a.body) > 10000
    g = s.get("/record_views", headers=[("Accept-Encoding", accept)])
    assert g.status == 200 and xc(g) == "HIT", g
    assert g.header("Content-Encoding") == "gzip", g
    vary = [v.strip().lower() for h in g.header_all("Vary") for v in h.split(",")]
    assert "accept-encoding" in vary, g.headers
    assert int(g.header("Content-Length")) == len(g.body) < len(a.body), g
    assert gzip.decompress(g.body) == a.body
    i = s.get("/record_views")
    assert xc(i) == "HIT" and i.header("Content-Encoding") in (None, "identity"), i
    assert i.body == a.body
    assert mock.count("GET /record_views") == 1


def test_gzip_and_identity_of_every_base_list_decode_to_the_same_json(daemon, mock):
    s = Sdk(daemon.port)
    for p in ("/programs", "/entity_slices", "/record_views"):
        a = prime(s, p)
        g = s.get(p, headers=[("Accept-Encoding", "gzip")])
        body = gzip.decompress(g.body) if g.header("Content-Encoding") == "gzip" else g.body
        assert body == a.body, p
        if len(a.body) >= 256:
            assert g.header("Content-Encoding") == "gzip", (p, g)


@pytest.mark.parametrize("hdr", [("Cache-Control", "no-cache"), ("Cache-Control", "no-store"),
                                 ("Pragma", "no-cache"), ("Cache-Control", "max-age=0, no-cache")],
                         ids=["cc-no-cache", "cc-no-store", "pragma-no-cache", "cc-list"])
def test_client_cache_directives_bypass_the_cache(daemon, mock, hdr):
    s = Sdk(daemon.port)
    prime(s, "/programs")
    r = s.get("/programs", headers=[hdr])
    assert r.status == 200 and xc(r) == "BYPASS", r
    assert mock.count("GET /programs") == 2
    assert daemon.stats()["families"]["programs"]["bypass"] == 1
