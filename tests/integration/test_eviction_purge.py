"""The cache file stays bounded and can be emptied on demand:
- eviction: the entries are kept under [cache] max_size, least recently
  used first, within a couple of maintenance ticks;
- pruning: entries past expiry + stale_if_error are deleted;
- the file gives space back (incremental auto-vacuum);
- purge: POST /_kaleidod/purge {family | prefix | all} and
  `kaleidod --purge FAMILY|/PREFIX|all`, the latter on the file directly,
  safe while the daemon runs (which notices within about a second);
- the stats' "cache" object reports all of it.
"""

import json
import math
import re

import pytest

from harness import Sdk, run_kaleidod, seconds_later, sql, sql_one, wait_for

KIB = 1024
FILLED = ["/programs", "/programs/p1", "/entity_slices", "/record_views", "/record_views?x=1"]


def xc(r):
    return r.header("X-Cache")


def usage(d):
    """(entry count, sum of entry sizes) as the file says."""
    n, size = sql(d.cache_file, "SELECT count(*), coalesce(sum(size), 0) FROM entries")[0]
    return n, size


def fill(s, targets=FILLED):
    for t in targets:
        r = s.get(t)
        assert r.status == 200 and xc(r) == "MISS", (t, r)


def stored(d, n):
    """Waits until the file holds n entries (stores may land after the answer)."""
    wait_for(lambda: usage(d)[0] == n, timeout=10, what="%d entries in the file" % n)


def purge(d, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return d.request("POST", "/_kaleidod/purge", [("Content-Type", "application/json")], data)


def check_json_error(r, status):
    assert r.status == status, r
    assert "json" in (r.header("Content-Type") or ""), r
    e = r.json()
    assert isinstance(e.get("error"), str) and e["error"], e
    return e


# ---------------------------------------------------------------- eviction
def test_file_uses_incremental_auto_vacuum(daemon):
    Sdk(daemon.port).get("/programs")
    assert sql_one(daemon.cache_file, "PRAGMA auto_vacuum") == 2
    assert sql_one(daemon.cache_file, "PRAGMA user_version") == 2


def accessed(d, target):
    """The file's accessed_at for target's entry (its key ends with it), or None."""
    return sql_one(d.cache_file, "SELECT accessed_at FROM entries"
                   " WHERE substr(key, -length(?1)) = ?1", ("\n" + target,))


def accessed_by_others(d, target):
    """The latest accessed_at of every other entry in the file."""
    return sql_one(d.cache_file, "SELECT max(accessed_at) FROM entries"
                   " WHERE substr(key, -length(?1)) != ?1", ("\n" + target,))


@pytest.mark.slow
def test_lru_eviction_keeps_the_file_under_max_size_and_spares_recent_entries(daemon_factory,
                                                                               mock):
    max_bytes = 200 * KIB
    d = daemon_factory(mock, config={"cache": {"max_size": "200K",
                                               "maintenance_interval": "1"}}).start()
    s = Sdk(d.port)
    s.auth()

    def page(i):
        return "/programs?page=%d" % i

    # Oldest: pages 0 and 1.  Then, later, enough others to fill the file
    # to about 70% of max_size.
    fill(s, [page(0), page(1)])
    seconds_later(2)
    n = 2
    stored(d, n)
    while usage(d)[1] < 140 * KIB:
        fill(s, [page(i) for i in range(n, n + 10)])
        n += 10
        # Stores land after the answers (the keeper's file thread writes
        # them): the loop goes by what the file holds, all n entries in it,
        # so it stops within 10 entries (~9 KiB) of 140 KiB.  Measuring
        # before they landed let a loaded machine fill on to 280 KiB.
        stored(d, n)
    count_a, bytes_a = usage(d)
    assert bytes_a < max_bytes, "filled past max_size before the test meant to: %d" % bytes_a
    st = d.stats()["cache"]
    assert st["evicted"] == 0 and count_a == n, ("evicted before the test meant to", st)
    avg = bytes_a / count_a
    # Page 0 is used again, later than any other entry so far.  The file
    # learns of a use at the next maintenance pass: wait for it there (not
    # for the clock), so the eviction below cannot run before it.
    seconds_later(2)
    r = s.get(page(0))
    assert xc(r) == "HIT", r
    wait_for(lambda: accessed(d, page(0)) > accessed_by_others(d, page(0)), timeout=10,
             interval=0.1, what="the file to record the new use of %s" % page(0))
    # The newest: about 100 KiB more, so the total passes max_size by ~40 KiB;
    # the least recently used (page 1, then the other old pages) have to go.
    newest = []
    for i in range(n, n + int(math.ceil(100 * KIB / avg))):
        newest.append(page(i))
    fill(s, newest)
    # The stores land after the answers: wait for the eviction they cause,
    # not just for a size that was never over max_size yet.
    wait_for(lambda: d.stats()["cache"]["evicted"] >= 1 and usage(d)[1] <= max_bytes,
             timeout=10, interval=0.1,
             what="an eviction down to max_size (%d bytes)" % max_bytes)
    st = d.stats()["cache"]
    assert st["evicted"] >= 1 and st["max_bytes"] == max_bytes, st
    # In the file: the least recently used went, the recently used stayed.
    assert accessed(d, page(1)) is None, "the least recently used entry is still in the file"
    assert accessed(d, page(0)) is not None, "the recently used entry was evicted from the file"
    kept = s.get(page(0))
    assert xc(kept) == "HIT", "the recently used entry was evicted: %r" % (kept,)
    for p in newest[-3:]:
        r = s.get(p)
        assert xc(r) == "HIT", "a new entry was evicted before old ones: %s %r" % (p, r)
    gone = s.get(page(1))
    assert xc(gone) == "MISS", "the least recently used entry is still there: %r" % (gone,)


def test_entries_past_the_stale_limit_are_pruned(daemon_factory, mock):
    d = daemon_factory(mock, config={
        "family.programs": {"ttl": "1"},
        "cache": {"stale_while_revalidate": "0", "stale_if_error": "1",
                  "maintenance_interval": "1"}}).start()
    s = Sdk(d.port)
    fill(s, ["/programs", "/programs/a", "/entity_slices"])

    def in_file(family):
        return sql_one(d.cache_file, "SELECT count(*) FROM entries WHERE family = ?", (family,))

    # Stores land after the answers: no programs row may only mean none was
    # stored yet.  The pruned counter says both were stored, then pruned;
    # the entity_slices row has to be there too.
    wait_for(lambda: d.stats()["cache"]["pruned"] >= 2 and in_file("entity_slices") == 1,
             timeout=10, interval=0.1, what="the expired programs entries to be pruned")
    assert in_file("programs") == 0
    assert in_file("entity_slices") == 1
    assert d.stats()["cache"]["pruned"] == 2, d.stats()["cache"]
    assert xc(s.get("/entity_slices")) == "HIT"
    # Nothing stale left to fall back on: the API's failure reaches the client.
    mock.fault("/programs", "status", status=503)
    assert s.get("/programs").status == 503


def test_the_file_gives_space_back(daemon_factory, mock):
    d = daemon_factory(mock, config={"cache": {"maintenance_interval": "1"}}).start()
    mock.config(record_views_bytes=256 * KIB)
    s = Sdk(d.port)
    fill(s, ["/record_views?page=%d" % i for i in range(24)])
    stored(d, 24)
    full = sql_one(d.cache_file, "PRAGMA page_count")
    r = purge(d, {"all": True})
    assert r.status == 200 and r.json()["purged"] == 24, r

    def shrunk():
        pages = sql_one(d.cache_file, "PRAGMA page_count")
        return pages if pages < full / 4 else None

    wait_for(shrunk, timeout=15, interval=0.2,
             what="the file to shrink from %d pages after a purge" % full)


def test_a_hit_right_after_a_miss_even_with_little_memory(daemon_factory, mock):
    # Each answer (64 KiB) is larger than the memory for hot copies: the
    # second GET must still find it (the file, then), not go upstream again.
    d = daemon_factory(mock, config={"cache": {"memory": "16K"}}).start()
    s = Sdk(d.port)
    for i in range(5):
        t = "/record_views?m=%d" % i
        fill(s, [t])
        r = s.get(t)
        assert xc(r) == "HIT", "GET right after the MISS of %s: %r" % (t, r)
    assert mock.count("GET /record_views") == 5
    assert d.stats()["cache"]["memory_bytes"] <= 16 * KIB


# ---------------------------------------------------------------- stats
def test_stats_cache_object(daemon_factory, mock):
    d = daemon_factory(mock, config={"cache": {"max_size": "1M", "memory": "100K"}}).start()
    s = Sdk(d.port)
    n = 60      # ~2 KiB each, used twice: more than 100K of memory can hold
    for i in range(n):
        t = "/programs?page=%d" % i
        fill(s, [t])
        assert xc(s.get(t)) == "HIT"
    stored(d, n)

    def settled():
        c = d.stats()["cache"]
        return c if (c["entries"], c["bytes"]) == usage(d) else None

    c = wait_for(settled, timeout=10, what="stats cache.entries/bytes to match the file")
    for k in ("entries", "bytes", "max_bytes", "memory_entries", "memory_bytes", "evicted",
              "pruned", "purged"):
        assert isinstance(c.get(k), int), (k, c)
    assert c["entries"] == n and c["max_bytes"] == 1024 * KIB, c
    assert 1 <= c["memory_entries"] < n, c
    assert 0 < c["memory_bytes"] <= 100 * KIB, c
    assert (c["evicted"], c["pruned"], c["purged"]) == (0, 0, 0), c
    assert c["warm"] is False, c


# ---------------------------------------------------------------- purge: HTTP
PURGES = [
    ({"family": "programs"}, {"/programs", "/programs/p1"}),
    ({"prefix": "/record_views"}, {"/record_views", "/record_views?x=1"}),
    ({"prefix": "/programs/p1"}, {"/programs/p1"}),
    ({"all": True}, set(FILLED)),
]


@pytest.mark.parametrize("body,gone", PURGES, ids=[json.dumps(p[0]) for p in PURGES])
def test_purge_endpoint_drops_exactly_what_it_names(daemon, mock, body, gone):
    s = Sdk(daemon.port)
    fill(s)
    stored(daemon, len(FILLED))
    before = daemon.stats()["cache"]["purged"]
    r = purge(daemon, body)
    assert r.status == 200, r
    assert r.json()["purged"] == len(gone), r.json()
    for t in FILLED:
        got = s.get(t)
        assert got.status == 200, (t, got)
        assert xc(got) == ("MISS" if t in gone else "HIT"), (t, got)
    assert daemon.stats()["cache"]["purged"] > before
    wait_for(lambda: usage(daemon)[0] == len(FILLED), timeout=10, what="the refetched entries")


def test_purge_right_after_a_miss_covers_that_entry(daemon, mock):
    # The client has its answer, so for it the entry exists: a purge sent
    # next must not be overtaken by the store of that answer.
    s = Sdk(daemon.port)
    for i in range(5):
        t = "/record_views?round=%d" % i
        fill(s, [t])
        r = purge(daemon, {"family": "record_views"})
        assert r.status == 200 and r.json()["purged"] == 1, (i, r.json())
        again = s.get(t)
        assert xc(again) == "MISS", "round %d: purged entry served: %r" % (i, again)
        purge(daemon, {"all": True})


@pytest.mark.parametrize("body", [b"{not json", json.dumps({"family": "nope"}).encode(),
                                  b"{}", json.dumps({"everything": True}).encode()],
                         ids=["bad-json", "unknown-family", "empty", "no-known-key"])
def test_purge_endpoint_refuses_what_it_cannot_do(daemon, mock, body):
    s = Sdk(daemon.port)
    fill(s, ["/programs"])
    e = check_json_error(purge(daemon, body), 400)
    assert e.get("detail"), e
    assert xc(s.get("/programs")) == "HIT", "a refused purge purged"


def test_purge_endpoint_wants_post(daemon):
    check_json_error(daemon.get("/_kaleidod/purge"), 405)


# ---------------------------------------------------------------- purge: CLI
def purged_count(out):
    m = re.search(r"purged (\d+)", out)
    assert m, "no 'purged N' in %r" % out
    return int(m.group(1))


def test_purge_cli_while_the_daemon_runs(daemon, mock):
    s = Sdk(daemon.port)
    fill(s)
    stored(daemon, len(FILLED))
    for t in FILLED:
        assert xc(s.get(t)) == "HIT"
    wait_for(lambda: daemon.stats()["cache"]["memory_entries"] >= 1, timeout=5,
             what="hot entries in memory")
    p = run_kaleidod(["--purge", "all", "--config", daemon.config_path])
    assert p.returncode == 0, p
    assert purged_count(p.stdout.decode()) == len(FILLED), p
    assert usage(daemon)[0] == 0
    wait_for(lambda: daemon.stats()["cache"]["memory_entries"] == 0, timeout=5,
             what="the daemon to drop its in-memory copies")
    for t in FILLED:
        r = s.get(t)
        assert r.status == 200 and xc(r) == "MISS", (t, r)
    assert daemon.proc.poll() is None


def test_purge_cli_family_while_the_daemon_runs(daemon, mock):
    s = Sdk(daemon.port)
    fill(s)
    stored(daemon, len(FILLED))
    for t in FILLED:
        assert xc(s.get(t)) == "HIT"
    p = run_kaleidod(["--purge", "record_views", "--config", daemon.config_path])
    assert p.returncode == 0 and purged_count(p.stdout.decode()) == 2, p
    wait_for(lambda: xc(s.get("/record_views?x=1")) == "MISS", timeout=5, interval=0.05,
             what="the daemon to notice the purge")
    assert xc(s.get("/record_views")) == "MISS"
    assert xc(s.get("/programs")) == "HIT"


def test_purge_cli_on_the_file_by_prefix_and_family(daemon_factory, mock):
    d = daemon_factory(mock).start()
    fill(Sdk(d.port))
    stored(d, len(FILLED))
    d.stop()
    p = run_kaleidod(["--purge", "/programs/p1", "--cache", d.cache_file])
    assert p.returncode == 0 and purged_count(p.stdout.decode()) == 1, p
    p = run_kaleidod(["--purge", "entity_slices", "--cache", d.cache_file])
    assert p.returncode == 0 and purged_count(p.stdout.decode()) == 1, p
    assert usage(d)[0] == len(FILLED) - 2
    d.start()
    s = Sdk(d.port)
    for t in FILLED:
        want = "MISS" if t in ("/programs/p1", "/entity_slices") else "HIT"
        assert xc(s.get(t)) == want, t


def test_purge_cli_unknown_family_fails_and_purges_nothing(daemon_factory, mock):
    d = daemon_factory(mock).start()
    fill(Sdk(d.port))
    stored(d, len(FILLED))
    p = run_kaleidod(["--purge", "no_such_family", "--cache", d.cache_file])
    assert p.returncode == 1, p
    assert b"no_such_family" in p.stderr, p
    assert usage(d)[0] == len(FILLED)
    assert xc(Sdk(d.port).get("/programs")) == "HIT"
