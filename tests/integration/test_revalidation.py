"""An expired entry is revalidated, not refetched: kaleidod keeps ETag and
Last-Modified, asks with If-None-Match and If-Modified-Since, and on a 304
serves the body it kept (X-Cache: REVALIDATED, the full 200 to the client),
with its freshness and stored headers taken from the 304.  A changed list
comes back whole (MISS).  Stale-while-revalidate is off here (0), so that
an expired entry is always checked before it is served.
"""

import json
import time

from harness import Sdk, wait_for

NO_SWR = {"stale_while_revalidate": "0"}


def xc(r):
    return r.header("X-Cache")


# 2 s, not 1: kaleidod's clock has whole seconds, so an entry refreshed at
# any moment is fresh for at least 1 s after, long enough for the one GET
# that checks it is a HIT (a 1 s entry may expire the next millisecond).
def start(daemon_factory, mock, ttl="2", family="programs"):
    cfg = {"cache": NO_SWR}
    if ttl is not None:
        cfg["family." + family] = {"ttl": ttl}
    return daemon_factory(mock, config=cfg).start()


def first_not_hit(s, target):
    """GETs target until an answer is not a HIT (the entry has expired)."""
    return wait_for(lambda: (lambda r: r if xc(r) != "HIT" else None)(s.get(target)),
                    timeout=10, interval=0.1, what="the entry of %s to expire" % target)


def upstream_headers(mock, path):
    """Headers (lower-case names) of each GET the mock saw for path, in order."""
    return [{k.lower(): v for k, v in e["headers"]} for e in mock.requests(path)
            if e["method"] == "GET" and e["target"].split("?")[0] == path]


def test_expired_entry_revalidated_by_304_serves_the_kept_body(daemon_factory, mock):
    d = start(daemon_factory, mock)
    s = Sdk(d.port)
    a = s.get("/programs")
    assert a.status == 200 and xc(a) == "MISS", a
    etag, lm = a.header("ETag"), a.header("Last-Modified")
    assert etag and lm, a
    r = first_not_hit(s, "/programs")
    assert r.status == 200 and xc(r) == "REVALIDATED", r
    assert r.body == a.body
    assert int(r.header("Content-Length")) == len(a.body), r
    assert r.header("ETag") == etag, r
    assert mock.count("GET /programs") == 2
    assert mock.conditional("GET /programs") == 1
    assert mock.not_modified("GET /programs") == 1
    sent = upstream_headers(mock, "/programs")
    assert len(sent) == 2, sent
    assert "if-none-match" not in sent[0] and "if-modified-since" not in sent[0], sent[0]
    assert sent[1].get("if-none-match") == etag, sent[1]
    assert sent[1].get("if-modified-since") == lm, sent[1]
    # The 304 made it fresh again: served from the cache, nothing upstream.
    h = s.get("/programs")
    assert xc(h) == "HIT" and h.body == a.body, h
    assert mock.count("GET /programs") == 2
    st = d.stats()
    assert st["families"]["programs"]["revalidated"] == 1, st["families"]["programs"]
    assert st["total"]["revalidated"] == 1, st["total"]


def test_changed_list_after_expiry_comes_back_whole(daemon_factory, mock):
    d = start(daemon_factory, mock, family="record_views")
    s = Sdk(d.port)
    a = s.get("/record_views")
    assert xc(a) == "MISS" and b"(gen 1)" in a.body, a
    mock.call("POST", "/_mock/bump", {"families": ["record_views"]})
    r = first_not_hit(s, "/record_views")
    assert r.status == 200 and xc(r) == "MISS", r
    assert b"(gen 2)" in r.body and r.header("ETag") != a.header("ETag"), r
    assert mock.conditional("GET /record_views") == 1, "the refetch was not conditional"
    assert mock.not_modified("GET /record_views") == 0
    h = s.get("/record_views")
    assert xc(h) == "HIT" and h.body == r.body, h
    assert d.stats()["families"]["record_views"]["revalidated"] == 0


def test_304_replaces_stored_headers_and_freshness(daemon_factory, mock):
    # Family TTL 300 s; the API's max-age=1 makes the entry expire.  The
    # 304 says max-age=300 and a new X-Kal-Version: both replace the stored
    # ones, so the entry stays fresh and carries the new header.
    d = start(daemon_factory, mock, ttl=None)
    mock.config(cache_control="max-age=1", extra_headers=[["X-Kal-Version", "1"]])
    s = Sdk(d.port)
    a = s.get("/entity_slices")
    assert xc(a) == "MISS" and a.header("X-Kal-Version") == "1", a
    mock.config(cache_control="max-age=300", extra_headers=[["X-Kal-Version", "2"]])
    r = first_not_hit(s, "/entity_slices")
    assert xc(r) == "REVALIDATED" and r.body == a.body, r
    assert r.header("X-Kal-Version") == "2", "stored header not replaced: %r" % (r.headers,)
    assert r.header_all("X-Kal-Version") == ["2"], r.headers
    assert mock.not_modified("GET /entity_slices") == 1
    # Watch it for longer than the old max-age=1 could have kept it: every
    # answer is a HIT with the new header and nothing more goes upstream.
    end = time.monotonic() + 1.6
    seen = []
    while time.monotonic() < end:
        h = s.get("/entity_slices")
        seen.append((xc(h), h.header("X-Kal-Version")))
        time.sleep(0.1)   # pacing the observation, not waiting for anything
    assert set(seen) == {("HIT", "2")}, seen
    assert mock.count("GET /entity_slices") == 2


def test_revalidation_by_last_modified_alone(daemon_factory, mock):
    mock.config(send_etag=False)
    d = start(daemon_factory, mock)
    s = Sdk(d.port)
    a = s.get("/programs")
    assert xc(a) == "MISS" and a.header("ETag") is None, a
    lm = a.header("Last-Modified")
    r = first_not_hit(s, "/programs")
    assert xc(r) == "REVALIDATED" and r.body == a.body, r
    sent = upstream_headers(mock, "/programs")[-1]
    assert sent.get("if-modified-since") == lm, sent
    assert "if-none-match" not in sent, sent
    assert mock.not_modified("GET /programs") == 1
    # A change moves Last-Modified on: the next check brings the new list.
    mock.call("POST", "/_mock/bump", {"families": ["programs"]})
    n = first_not_hit(s, "/programs")
    assert xc(n) == "MISS" and b"(gen 2)" in n.body, n
    assert json.loads(n.body)[0]["title"] == "Program 0 (gen 2)"
