"""Concurrent misses for one key make one upstream request: every client
that waits on it gets the same answer (status and body, X-Cache: MISS); a
failure (5xx, reset, timeout) reaches every waiter and the next request
tries again; different keys are never merged.
"""

import json
import socket
import threading

import pytest

from harness import Sdk, wait_for


def xc(r):
    return r.header("X-Cache")


def fam_stats(d, family):
    return d.stats()["families"][family]


class Clients:
    """One thread per target, all sharing one local token; results in the
    order of the targets (a Response or the exception raised)."""

    def __init__(self, sdk, targets):
        self.results = [None] * len(targets)
        self.threads = [threading.Thread(target=self._one, args=(sdk, i, t))
                        for i, t in enumerate(targets)]
        for t in self.threads:
            t.start()

    def _one(self, sdk, i, target):
        try:
            self.results[i] = sdk.get(target)
        except Exception as e:  # reported by the test
            self.results[i] = e

    def done(self):
        return not any(t.is_alive() for t in self.threads)

    def join(self, timeout=30):
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "clients still waiting"
        errors = [r for r in self.results if isinstance(r, Exception)]
        assert not errors, "clients failed: %r" % errors[:5]
        return self.results


def wait_requests(d, family, n, base):
    wait_for(lambda: fam_stats(d, family)["requests"] >= base + n, timeout=15,
             what="%d %s requests to reach kaleidod" % (n, family))


def test_50_concurrent_misses_make_one_upstream_request(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    base = fam_stats(daemon, "record_views")["requests"]
    mock.hold("/record_views")
    clients = Clients(s, ["/record_views"] * 50)
    try:
        wait_for(lambda: mock.stats()["held"] >= 1, timeout=15,
                 what="the first fetch to be held at the mock")
        wait_requests(daemon, "record_views", 50, base)
        held, n = mock.stats()["held"], mock.count("GET /record_views")
    finally:
        mock.release()
        results = clients.join()
    assert (held, n) == (1, 1), "%d fetches held, %d seen, for 50 clients of one key" % (held, n)
    assert {r.status for r in results} == {200}, results[:3]
    assert {xc(r) for r in results} == {"MISS"}, [xc(r) for r in results]
    assert len({r.body for r in results}) == 1, "waiters got different bodies"
    assert len({r.header("ETag") for r in results}) == 1
    assert "(gen 1)" in json.loads(results[0].body)[0]["view_name"]
    assert mock.count("GET /record_views") == 1
    st = daemon.stats()
    assert st["families"]["record_views"]["coalesced"] == 49, st["families"]["record_views"]
    assert st["total"]["coalesced"] == 49, st["total"]
    after = s.get("/record_views")
    assert xc(after) == "HIT" and after.body == results[0].body, after
    assert mock.count("GET /record_views") == 1


def test_same_key_waits_together_but_different_keys_go_upstream_each(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    base = fam_stats(daemon, "programs")["requests"]
    mock.hold("/programs")
    # Two clients per key; query order does not make a different key.
    targets = ["/programs?page=%d&size=10" % i for i in range(5)]
    targets += ["/programs?size=10&page=%d" % i for i in range(5)]
    clients = Clients(s, targets)
    try:
        wait_requests(daemon, "programs", 10, base)
        wait_for(lambda: mock.stats()["held"] >= 5, timeout=15, what="5 fetches held")
        held = mock.stats()["held"]
    finally:
        mock.release()
        results = clients.join()
    assert held == 5, "%d upstream fetches for 5 keys" % held
    assert all(r.status == 200 and xc(r) == "MISS" for r in results), results
    for i in range(5):
        assert results[i].body == results[i + 5].body
    assert mock.count("GET /programs") == 5
    assert fam_stats(daemon, "programs")["coalesced"] == 5


FAILURES = [
    # kind, fault arguments, what every waiter gets
    ("status", {"status": 503}, 503),
    ("reset", {}, 502),
    ("hang", {}, 504),
]


@pytest.mark.parametrize("kind,kw,status", FAILURES, ids=[f[0] for f in FAILURES])
def test_failure_reaches_every_waiter_and_next_request_tries_again(daemon_factory, mock,
                                                                    kind, kw, status):
    # "hang" never answers (kaleidod's 8 s timeout ends it, long enough for
    # all ten to join the one fetch, even under load); the others are held
    # until released, then fail, with time for the test to see all ten.
    d = daemon_factory(mock, config={"upstream": {"timeout": "8" if kind == "hang" else "30"}})
    d.start()
    s = Sdk(d.port)
    s.auth()
    base = fam_stats(d, "programs")["requests"]
    mock.fault("/programs", kind, wait=(kind != "hang"), **kw)
    clients = Clients(s, ["/programs"] * 10)
    try:
        wait_for(lambda: mock.stats()["held"] >= 1, timeout=15, what="the fetch held")
        wait_requests(d, "programs", 10, base)
        if kind != "hang":
            # Released until every client has its answer: curl itself
            # retries once when a reused connection is reset before any
            # answer byte, then kaleidod once more on a fresh connection
            # (a GET, issue 10), and each retry is held again.
            def answered():
                if mock.stats()["held"]:
                    mock.release()
                return clients.done()
            wait_for(answered, timeout=20, what="the waiters' answers")
        results = clients.join()
        fetches = mock.count("GET /programs")
    finally:
        mock.clear_faults()
    assert [r.status for r in results] == [status] * 10, results
    assert len({r.body for r in results}) == 1, "waiters got different bodies: %r" % results
    e = results[0].json()
    if kind == "status":
        assert e["detail"] == "injected fault", e     # the API's own answer, passed through
    else:
        assert e.get("error") and e.get("detail"), e
        assert "127.0.0.1:%d" % mock.port in results[0].body.decode(), e
    assert fetches <= (3 if kind == "reset" else 1), "%d fetches for 10 waiters" % fetches
    assert fam_stats(d, "programs")["coalesced"] == 9
    again = s.get("/programs")
    assert again.status == 200 and xc(again) == "MISS", again
    assert mock.count("GET /programs") == fetches + 1, "the failure was kept, not retried"
    assert xc(s.get("/programs")) == "HIT"


def test_waiters_get_the_answer_when_the_first_client_hangs_up(daemon, mock):
    s = Sdk(daemon.port)
    s.auth()
    want = mock.direct_get("/entity_slices").body
    fetched = mock.count("GET /entity_slices")
    base = fam_stats(daemon, "entity_slices")["requests"]
    mock.hold("/entity_slices")
    first = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    clients = None
    try:
        head = "GET /entity_slices HTTP/1.1\r\nHost: 127.0.0.1\r\n%s: %s\r\n\r\n" % \
            s.auth_headers()[0]
        first.sendall(head.encode())
        wait_for(lambda: mock.stats()["held"] >= 1, timeout=15, what="the first fetch held")
        clients = Clients(s, ["/entity_slices"] * 5)
        wait_requests(daemon, "entity_slices", 6, base)
        first.close()
        first = None
    finally:
        if first is not None:
            first.close()
        mock.release()
    results = clients.join()
    assert all(r.status == 200 and r.body == want for r in results), results
    # Ideally 1; an implementation may refetch once for the waiters.
    assert mock.count("GET /entity_slices") - fetched <= 2, mock.stats()["counts"]
    assert xc(s.get("/entity_slices")) == "HIT"
    assert daemon.proc.poll() is None
