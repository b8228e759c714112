"""Issue 10: every list the SDKs cache in-process is a family on by default
(stored, a HIT the second time, refreshed ahead, emptied by each write that
changes it and by no other); records are opt-in; and a GET whose connection
to the API failed before any answer is sent once more, never a write.
"""

import pytest

from harness import Sdk, run_kaleidod, wait_for


def xc(r):
    return r.header("X-Cache")


# (family, what a client reads, the writes that empty it)
NEW_FAMILIES = [
    ("key_fields", "/key_fields", [("POST", "/key_fields/"), ("POST", "/push/imports")]),
    ("data_fields", "/data_fields",
     [("POST", "/data_fields/"), ("POST", "/push/imports/source-1")]),
    ("property_fields", "/property_fields", [("PUT", "/properties/p1")]),
    ("activities", "/activities",
     [("POST", "/activities"), ("PUT", "/activities/a1")]),
    ("activities", "/activities/a1", [("PUT", "/activities/a1")]),
    ("activities", "/activities?activity_ids=a1,a2", [("POST", "/activities")]),
    ("activity_definitions", "/activity_definitions", [("POST", "/activity_definitions")]),
    ("activity_labels", "/activity_labels", [("POST", "/activity_labels")]),
    ("dashboards", "/dashboards",
     [("POST", "/dashboards/d1/categories"), ("DELETE", "/dashboards/d1/charts/c1")]),
    ("dashboards", "/dashboards/d1/categories", [("POST", "/dashboards/d1/categories")]),
    ("workspace_active", "/workspaces/active", [("POST", "/workspaces/active")]),
    ("workspace_members", "/workspaces/members", [("POST", "/workspaces/members/invite")]),
    ("workspace_groups", "/workspaces/groups", [("PUT", "/workspaces/groups/g1")]),
]

BASE_LISTS = ["/programs", "/entity_slices", "/record_views", "/key_fields", "/data_fields",
              "/property_fields", "/activities", "/activity_definitions", "/activity_labels",
              "/dashboards", "/workspaces/active", "/workspaces/members", "/workspaces/groups"]


def miss_then_hit(s, mock, target):
    path = target.split("?")[0]
    before = mock.count("GET " + path)
    a = s.get(target)
    assert (a.status, xc(a)) == (200, "MISS"), a
    b = s.get(target)
    assert (b.status, xc(b)) == (200, "HIT"), b
    assert b.body == a.body
    assert mock.count("GET " + path) == before + 1
    return a


@pytest.mark.parametrize("family,target,writes", NEW_FAMILIES,
                         ids=["%s:%s" % (f, t) for f, t, _ in NEW_FAMILIES])
def test_new_family_is_cached_and_emptied_by_each_of_its_writes(daemon, mock, family, target,
                                                                writes):
    s = Sdk(daemon.port)
    for method, wtarget in writes:
        before = miss_then_hit(s, mock, target).json()
        assert before["family"] == family, before  # the mock's list, with its generation
        # An unrelated write leaves it alone.
        assert s.request("POST", "/workspaces/events/ack", body=b"{}").status == 200
        assert xc(s.get(target)) == "HIT"
        w = s.request(method, wtarget, body=b'{"x": 1}')
        assert w.status == 200, w
        r = s.get(target)
        assert (r.status, xc(r)) == (200, "MISS"), (method, wtarget, r)
        assert r.json()["gen"] > before["gen"], (before, r.json())  # the API's new list
        assert xc(s.get(target)) == "HIT"
        # The next write starts from an entry of its own.
        assert s.request("POST", target.split("?")[0], body=b"{}").status == 200
    fam = daemon.stats()["families"][family]
    assert fam["hits"] >= 2 * len(writes) and fam["invalidations"] >= len(writes), fam


def test_a_write_empties_only_what_it_changes(daemon, mock):
    s = Sdk(daemon.port)
    for t in BASE_LISTS:
        miss_then_hit(s, mock, t)
    assert s.request("POST", "/key_fields/", body=b'{"name": "k"}').status == 200
    emptied = {t for t in BASE_LISTS if xc(s.get(t)) == "MISS"}
    assert emptied == {"/key_fields", "/entity_slices", "/record_views"}, emptied
    assert s.request("PUT", "/properties/p1", body=b'{"v": 1}').status == 200
    emptied = {t for t in BASE_LISTS if xc(s.get(t)) == "MISS"}
    assert emptied == {"/property_fields"}, emptied


def test_every_base_list_is_fetched_at_start_and_refreshed_ahead(daemon_factory, mock):
    d = daemon_factory(mock, config={"cache": {"refresh_ahead": "yes"},
                                     "family.activity_labels": {"ttl": "3"}}).start()

    def all_fetched():
        return all(mock.count("GET " + t) >= 1 for t in BASE_LISTS)

    wait_for(all_fetched, timeout=20, what="every base list fetched at start")
    # Asked of the API is not yet stored: "warm" is every base list held.
    wait_for(lambda: d.stats()["cache"]["warm"] is True, timeout=20, what="warm-up")
    s = Sdk(d.port)
    for t in BASE_LISTS:
        if t != "/activity_labels":   # the 3 s list is checked below
            r = s.get(t)
            assert (r.status, xc(r)) == (200, "HIT"), (t, r)
    # The 3 s list is fetched again, with no client ever asking for it:
    # only refresh-ahead does that.
    wait_for(lambda: mock.count("GET /activity_labels") >= 2, timeout=15,
             what="the 3 s list refreshed ahead")
    wait_for(lambda: d.stats()["families"]["activity_labels"]["refreshes"] >= 2,
             timeout=15, what="the refresh counted")
    # A client is answered from the copy: a HIT, or a STALE answer if a
    # refresh had not ended before the copy expired (a loaded machine may
    # do that).  Never a MISS.
    r = s.get("/activity_labels")
    assert r.status == 200 and xc(r) in ("HIT", "STALE"), r
    # The paged event log and the records are never fetched unasked.
    assert mock.count("GET /workspaces/events") == 0
    assert mock.count("GET /records") == 0


RECORD_READS = ["/records/r1", "/records?record_ids=a,b", "/records/r1/values",
                "/records/search?q=%22x%22", "/records/identifiers?key=k",
                "/records/r1/operations", "/operations/o1/records"]


@pytest.mark.parametrize("target", RECORD_READS + ["/workspaces/events?page=1"])
def test_records_and_the_event_log_are_not_cached_by_default(daemon, mock, target):
    s = Sdk(daemon.port)
    for _ in range(2):
        r = s.get(target)
        assert r.status == 200 and xc(r) is None, r
    assert mock.count("GET " + target.split("?")[0]) == 2


@pytest.fixture
def records_daemon(daemon_factory, mock):
    return daemon_factory(mock, config={"cache": {"records": "yes"}}).start()


def test_records_cached_when_switched_on(records_daemon, mock):
    s = Sdk(records_daemon.port)
    for t in RECORD_READS:
        miss_then_hit(s, mock, t)
    fams = records_daemon.stats()["families"]
    assert fams["records"]["hits"] == 5 and fams["record_operations"]["hits"] == 2, fams
    # Exports are files: forwarded every time.
    for _ in range(2):
        r = s.get("/records/export/csv?filename=x.csv&size=1000")
        assert r.status == 200 and xc(r) is None and len(r.body) == 1000, r
    assert mock.count("GET /records/export/csv") == 2


@pytest.mark.parametrize("method,target", [
    ("POST", "/records"),
    ("POST", "/records/r9/values"),
    ("POST", "/records/r9/values/file"),
    ("PUT", "/operations/o9/records"),
    ("PUT", "/properties/p9"),
])
def test_record_writes_empty_both_records_families(records_daemon, mock, method, target):
    s = Sdk(records_daemon.port)
    for t in ("/records/r1", "/records/r1/operations", "/operations/o1/records"):
        miss_then_hit(s, mock, t)
    assert s.request(method, target, body=b'{"v": 1}').status == 200
    for t in ("/records/r1", "/records/r1/operations", "/operations/o1/records"):
        r = s.get(t)
        assert (r.status, xc(r)) == (200, "MISS"), (method, target, t, r)
    # Other lists keep their entries.
    miss_then_hit(s, mock, "/programs")
    assert s.request(method, target, body=b'{"v": 2}').status == 200
    assert xc(s.get("/programs")) == "HIT"


def test_records_family_configured_without_the_switch_is_refused(tmp_path):
    conf = tmp_path / "k.conf"
    conf.write_text("[upstream]\nclient_id = id\nclient_secret = s\n"
                    "[cache]\nfile = %s\n[family.records]\nttl = 30\n" % (tmp_path / "c.db"))
    p = run_kaleidod(["--config", str(conf), "--check-config"])
    assert p.returncode != 0, p
    err = p.stderr.decode()
    assert "[family.records]: records are cached only with [cache] records = yes" in err, err
    conf.write_text(conf.read_text().replace("[cache]\n", "[cache]\nrecords = yes\n"))
    p = run_kaleidod(["--config", str(conf), "--check-config"])
    assert p.returncode == 0, p.stderr.decode()


# ---- one retry for a GET whose connection failed before any answer -------
# curl itself resends once when a kept-alive connection turns out dead (the
# first reset below); a failure on a fresh connection is what kaleidod's own
# retry is for (the second).

def test_get_retried_once_on_a_fresh_connection(daemon, mock):
    s = Sdk(daemon.port)
    assert s.get("/workspaces/events?page=0").status == 200
    mock.fault("/workspaces/events", "reset", method="GET", times=2)
    r = s.get("/workspaces/events?page=1")
    assert r.status == 200, r
    assert mock.count("GET /workspaces/events") == 1 + 3
    up = daemon.stats()["upstream"]
    assert (up["retried"], up["not_retried"]) == (1, 0), up


def test_get_failing_again_is_retried_only_once(daemon, mock):
    s = Sdk(daemon.port)
    assert s.get("/workspaces/events?page=0").status == 200
    mock.fault("/workspaces/events", "reset", method="GET", times=3)
    r = s.get("/workspaces/events?page=1")
    assert r.status == 502 and r.json()["error"] == "upstream unreachable", r
    assert mock.count("GET /workspaces/events") == 1 + 3
    assert daemon.stats()["upstream"]["retried"] == 1
    mock.clear_faults()
    assert s.get("/workspaces/events?page=1").status == 200


@pytest.mark.parametrize("method,body", [("POST", b'{"v": 1}'), ("PUT", b'{"v": 1}'),
                                         ("DELETE", None)])
def test_a_write_is_never_sent_twice(daemon, mock, method, body):
    s = Sdk(daemon.port)
    assert s.get("/workspaces/events?page=0").status == 200
    mock.fault("/workspaces/events", "reset", method=method, times=1)
    r = s.request(method, "/workspaces/events/x", body=body)
    assert r.status == 502, r
    assert mock.count("%s /workspaces/events/x" % method) == 1
    up = daemon.stats()["upstream"]
    assert (up["retried"], up["not_retried"]) == (0, 1), up
    # The next one goes through, on a new connection of its own.
    assert s.request(method, "/workspaces/events/x", body=body).status == 200
    assert mock.count("%s /workspaces/events/x" % method) == 2
