"""Slow upstream calls never hold up anyone else: while 20 cache misses
wait on the API, a cache hit and a local token are answered at once."""

import threading
import time

from harness import Sdk, wait_for

WAITING = 20


def test_hit_answered_while_20_misses_wait_upstream(daemon, mock):
    s = Sdk(daemon.port)
    assert s.get("/programs").header("X-Cache") == "MISS"
    mock.hold("/entity_slices")
    results, errors = {}, []
    lock = threading.Lock()

    def miss(i):
        try:
            r = Sdk(daemon.port).get("/entity_slices?page=%d" % i)
            with lock:
                results[i] = (r.status, r.header("X-Cache"))
        except Exception as e:
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=miss, args=(i,)) for i in range(WAITING)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: mock.stats()["held"] == WAITING, timeout=15,
                 what="%d requests held at the mock" % WAITING)
        t0 = time.monotonic()
        hit = s.get("/programs")
        local = Sdk(daemon.port).auth()
        health = daemon.get("/_kaleidod/health")
        took = time.monotonic() - t0
        still = mock.stats()["held"]
    finally:
        mock.release()
        for t in threads:
            t.join(30)
    assert hit.status == 200 and hit.header("X-Cache") == "HIT", hit
    assert local["access_token"]
    assert health.status in (200, 503), health
    # The order proves it: all three answered while every miss was held.
    assert still == WAITING, "the held misses finished before the hit was checked (%.1f s)" % took
    assert not errors, errors
    assert results == {i: (200, "MISS") for i in range(WAITING)}, results
    assert mock.count("GET /entity_slices") == WAITING
