"""Several kaleidod instances kept coherent through Redis ([cluster] redis):
- a write or a purge on one instance empties that family (or prefix, or
  everything) on the others, in memory and in their cache files;
- generations catch up what an instance missed while cut off, a write made
  while Redis was down is published once it is back, and a Redis restarted
  empty (a new epoch) drops everything; so does an instance's first contact;
- with Redis down, refused, stalled or not there at start, every instance
  goes on serving with no client-visible error, health stays 200 with
  cluster state "down", and it comes back by itself;
- the password comes from KALEIDOD_REDIS_PASSWORD only and is never shown;
- bad [cluster] settings are refused at startup naming the key; two
  workspaces (prefixes) on one Redis do not touch each other.

Each test runs its own redis-server (redisfix.py: a unix socket in the
test's dir, nothing saved unless the test asks) and, where a link has to be
cut, a TCP forwarder the test controls.  Nothing waits on time: every wait
is for state the instances show (stats, health, X-Cache, the file).
"""

import concurrent.futures
import json
import re

import pytest

from harness import CLIENT_SECRET, Sdk, ini_text, run_kaleidod, sql_one, wait_for
from redisfix import Forwarder, RedisServer

COUNTERS = ("published", "received", "applied", "catchups", "connects", "errors")
WAIT = 20       # seconds: generous bounds for a loaded machine; never reached when it works


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def redis_factory(request, tmp_path):
    """redis-server processes (started), each in its own dir; killed by PID
    after the test (after the daemons: this fixture is set up first)."""
    made = []

    def make(name="redis", password=None, start=True):
        r = RedisServer(tmp_path, password=password, name=name)
        made.append(r)
        request.node.kd_logs = getattr(request.node, "kd_logs", []) + [(name, r.log_path)]
        return r.start() if start else r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def redis(redis_factory):
    return redis_factory()


@pytest.fixture
def forwarders():
    made = []

    def make(target):
        f = Forwarder(target)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


# ---------------------------------------------------------------- helpers
def instance(daemon_factory, upstream, tmp_path, name, redis_spec=None, prefix=None,
             password=None, start=True, config=None, shared=False):
    """A kaleidod with its own cache file, in the cluster at redis_spec
    (None: no [cluster]), with the shared cache if shared.
    KALEIDOD_REDIS_PASSWORD is always set, empty when there is none, so the
    runner's own environment cannot leak in."""
    cfg = dict(config or {})
    if redis_spec is not None:
        cl = {"redis": redis_spec}
        if prefix is not None:
            cl["prefix"] = prefix
        if shared:
            cl["shared_cache"] = "yes"
        cfg["cluster"] = cl
    d = daemon_factory(upstream, name=name, cache_file=str(tmp_path / ("%s.db" % name)),
                       config=cfg, env={"KALEIDOD_REDIS_PASSWORD": password or ""})
    if start:
        d.start()
    return d


def pair(daemon_factory, mock, tmp_path, spec_a, spec_b=None, shared=False):
    """Two instances A and B in front of one mock, in one cluster, both up."""
    a = instance(daemon_factory, mock, tmp_path, "kdA", spec_a, shared=shared)
    b = instance(daemon_factory, mock, tmp_path, "kdB", spec_b or spec_a, shared=shared)
    for d in (a, b):
        wait_until_state(d, "up")
    return a, b


def xc(r):
    return r.header("X-Cache")


def cluster(d):
    """The stats' cluster object."""
    st = d.stats()
    assert "cluster" in st, st
    return st["cluster"]


def health(d):
    r = d.get("/_kaleidod/health")
    return r.status, r.json()


def state(d):
    status, h = health(d)
    assert status == 200, (status, h)
    return h["cluster"]["state"]


def wait_until_state(d, want, timeout=WAIT):
    return wait_for(lambda: state(d) == want, timeout=timeout, interval=0.05,
                    what="%s's cluster state %r (log:\n%s)" % (d.name, want, d.log_tail(30)))


def counter(d, name):
    v = cluster(d)[name]
    assert isinstance(v, int) and not isinstance(v, bool), (name, v)
    return v


def wait_counter(d, name, at_least, timeout=WAIT):
    return wait_for(lambda: counter(d, name) >= at_least, timeout=timeout, interval=0.05,
                    what="%s's cluster %s >= %d" % (d.name, name, at_least))


def metrics(d):
    r = d.get("/_kaleidod/metrics")
    assert r.status == 200, r
    return r.body.decode()


def metric(text, name, labels=""):
    """The one sample of name{labels} (labels as written, e.g.
    'direction="published"'), as a float."""
    pat = r"^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % labels) if labels else "")
    hits = re.findall(pat, text, re.M)
    assert len(hits) == 1, (name, labels, [ln for ln in text.splitlines() if name in ln])
    return float(hits[0])


def fill(s, targets):
    """Each target is fetched (MISS) and then served from the cache (HIT)."""
    for t in targets:
        r = s.get(t)
        assert r.status == 200 and xc(r) == "MISS", (t, r)
        r = s.get(t)
        assert r.status == 200 and xc(r) == "HIT", (t, r)


def in_file(d, family):
    return sql_one(d.cache_file, "SELECT count(*) FROM entries WHERE family = ?", (family,))


def target_in_file(d, target):
    """Entries of target in d's file (a key ends with the path, "?" and
    the query)."""
    tail = "\n" + target + ("" if "?" in target else "?")
    return sql_one(d.cache_file, "SELECT count(*) FROM entries WHERE substr(key, -length(?1)) = ?1",
                   (tail,))


def stored(d, family, n=1):
    wait_for(lambda: in_file(d, family) >= n, timeout=WAIT, interval=0.05,
             what="%s's file to hold %d %s entries" % (d.name, n, family))


def wait_miss(s, d, target, timeout=WAIT):
    """Reads target until it is a MISS (each HIT on the way changes nothing)."""
    def miss():
        r = s.get(target)
        assert r.status == 200, (d.name, target, r)
        return xc(r) == "MISS"
    wait_for(miss, timeout=timeout, interval=0.05,
             what="a MISS for %s on %s (stats: %r)" % (target, d.name, _safe_cluster(d)))


def _safe_cluster(d):
    try:
        return cluster(d)
    except Exception as e:    # only for a failure message
        return e


def hit(s, target):
    r = s.get(target)
    assert r.status == 200, (target, r)
    return xc(r) == "HIT"


def write(s, method, target, body=b'{"x": 1}'):
    r = s.request(method, target, body=body)
    assert r.status == 200, (method, target, r)
    return r


def purge(d, body):
    r = d.request("POST", "/_kaleidod/purge", [("Content-Type", "application/json")],
                  json.dumps(body).encode())
    assert r.status == 200, (body, r)
    return r.json()


def warnings(d, levels="error|warning"):
    """The daemon's log lines about the cluster at these levels."""
    return [ln for ln in d.log().splitlines()
            if re.search(r": (%s): cluster:" % levels, ln)]


# ---------------------------------------------------------------- propagation
def test_a_write_on_one_instance_empties_that_family_on_the_others(redis, mock, daemon_factory,
                                                                   tmp_path):
    a = instance(daemon_factory, mock, tmp_path, "kdA", redis.spec)
    b = instance(daemon_factory, mock, tmp_path, "kdB", redis.spec)
    c = instance(daemon_factory, mock, tmp_path, "kdC", redis.spec)
    for d in (a, b, c):
        wait_until_state(d, "up")
        cl = cluster(d)
        assert cl["redis"] == redis.spec, cl
        assert re.fullmatch(r"kaleidod:[0-9a-f]{16}", cl["prefix"]), cl
        for k in COUNTERS:
            assert isinstance(cl[k], int), (k, cl)
    # One workspace (same url and client id): one default prefix.
    assert cluster(a)["prefix"] == cluster(b)["prefix"] == cluster(c)["prefix"]
    sa, sb, sc = Sdk(a.port), Sdk(b.port), Sdk(c.port)
    for s in (sb, sc):
        fill(s, ["/programs", "/programs/p1", "/entity_slices"])
    stored(b, "programs", 2)
    stored(c, "programs", 2)
    pub0 = counter(a, "published")
    rec0, app0 = counter(b, "received"), counter(b, "applied")
    gets0 = mock.count("GET /programs")

    write(sa, "POST", "/programs")

    wait_counter(a, "published", pub0 + 1)
    wait_counter(b, "received", rec0 + 1)
    wait_counter(b, "applied", app0 + 1)
    # Dropped from the file too (a restart would not bring them back)...
    for d in (b, c):
        wait_for(lambda: in_file(d, "programs") == 0, timeout=WAIT, interval=0.05,
                 what="%s's file to lose its programs entries" % d.name)
    # ... and from memory: the next reads go to the API.
    for s, d in ((sb, b), (sc, c)):
        wait_miss(s, d, "/programs")
        wait_miss(s, d, "/programs/p1")
        assert hit(s, "/programs")
        assert hit(s, "/entity_slices"), "a write to programs emptied entity_slices on %s" % d.name
    assert mock.count("GET /programs") == gets0 + 2
    # The metrics say the same.
    ma, mb = metrics(a), metrics(b)
    assert metric(ma, "kaleidod_cluster_up") == 1 and metric(mb, "kaleidod_cluster_up") == 1
    assert metric(ma, "kaleidod_cluster_events_total", 'direction="published"') >= pub0 + 1
    assert metric(mb, "kaleidod_cluster_events_total", 'direction="received"') >= rec0 + 1
    for m in (ma, mb):
        metric(m, "kaleidod_cluster_catchups_total")
        assert metric(m, "kaleidod_cluster_connects_total") >= 1
    # Redis holds only this workspace's keys.
    pfx = cluster(a)["prefix"]
    keys = redis.keys()
    assert keys and all(k.startswith(pfx + ":") for k in keys), (pfx, keys)


def test_writes_of_every_method_and_from_either_side_propagate(redis, mock, daemon_factory,
                                                               tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec)
    sa, sb = Sdk(a.port), Sdk(b.port)
    cases = [(sa, sb, b, "PUT", "/programs/p1", "/programs"),
             (sb, sa, a, "PATCH", "/entity_slices/e1", "/entity_slices"),
             (sa, sb, b, "DELETE", "/record_views/r1", "/record_views"),
             # one write that empties two families (as the mock's API does)
             (sb, sa, a, "POST", "/key_fields/", "/entity_slices")]
    for writer, reader_s, reader, method, wtarget, target in cases:
        r = reader_s.get(target)
        assert r.status == 200, r
        assert hit(reader_s, target), (target, reader.name)
        write(writer, method, wtarget)
        wait_miss(reader_s, reader, target)


@pytest.mark.parametrize("body,gone,kept", [
    ({"family": "programs"}, ["/programs", "/programs/p1"], ["/record_views"]),
    ({"prefix": "/programs/p1"}, ["/programs/p1"], ["/programs", "/record_views"]),
    ({"all": True}, ["/programs", "/programs/p1", "/record_views"], []),
], ids=["family", "prefix", "all"])
def test_a_purge_on_one_instance_purges_the_others(redis, mock, daemon_factory, tmp_path,
                                                   body, gone, kept):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec)
    sb = Sdk(b.port)
    fill(sb, gone + kept)
    wait_for(lambda: all(target_in_file(b, t) == 1 for t in gone + kept), timeout=WAIT,
             interval=0.05, what="B's entries in its file")
    pub0, app0 = counter(a, "published"), counter(b, "applied")

    purge(a, body)

    wait_counter(a, "published", pub0 + 1)
    wait_counter(b, "applied", app0 + 1)
    for t in gone:
        wait_for(lambda: target_in_file(b, t) == 0, timeout=WAIT, interval=0.05,
                 what="%s purged from B's file" % t)
    for t in gone:
        wait_miss(sb, b, t)
    for t in kept:
        assert hit(sb, t), "%s purged on B by %r" % (t, body)


# ---------------------------------------------------------------- Redis down
def test_redis_killed_midrun_nobody_notices_and_both_come_back(redis, mock, daemon_factory,
                                                                tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec)
    sa, sb = Sdk(a.port), Sdk(b.port)
    for s in (sa, sb):
        fill(s, ["/programs", "/entity_slices"])
    conn0 = {d.name: counter(d, "connects") for d in (a, b)}

    redis.kill()

    for d in (a, b):
        wait_until_state(d, "down")
        status, h = health(d)
        assert status == 200 and h["cluster"]["state"] == "down", (d.name, status, h)
        assert metric(metrics(d), "kaleidod_cluster_up") == 0
        assert counter(d, "errors") >= 1
    # Hits, misses, writes and purges, with no client-visible error.
    assert hit(sa, "/programs") and hit(sb, "/entity_slices")
    fill(sb, ["/record_views"])
    write(sa, "POST", "/programs")
    r = sa.get("/programs")
    assert r.status == 200 and xc(r) == "MISS", "A's own write must still empty A: %r" % r
    purge(b, {"family": "record_views"})
    r = sb.get("/record_views")
    assert r.status == 200 and xc(r) == "MISS", r

    redis.restart(empty=True)

    for d in (a, b):
        wait_until_state(d, "up")
        assert counter(d, "connects") > conn0[d.name]
        assert metric(metrics(d), "kaleidod_cluster_up") == 1
    # B hears of A's write made while Redis was down (or drops everything
    # for the new epoch): either way not the old programs list.
    wait_miss(sb, b, "/programs")


def test_missed_invalidations_are_caught_up_through_generations(redis, mock, daemon_factory,
                                                                 tmp_path, forwarders):
    fwd = forwarders(redis.sock_path)
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, fwd.spec)
    assert cluster(b)["redis"] == fwd.spec
    sa, sb = Sdk(a.port), Sdk(b.port)
    fill(sb, ["/programs", "/entity_slices"])
    catch0, conn0, err0 = (counter(b, k) for k in ("catchups", "connects", "errors"))
    rec0 = counter(b, "received")

    fwd.cut()                        # every connection closed, new ones refused
    wait_until_state(b, "down")
    pub0 = counter(a, "published")
    write(sa, "POST", "/programs")
    wait_counter(a, "published", pub0 + 1)
    # B keeps retrying (each refused), and serves from its own cache meanwhile.
    wait_counter(b, "errors", err0 + 2)
    assert hit(sb, "/programs"), "B heard of the write through a cut link?"
    status, h = health(b)
    assert status == 200 and h["cluster"]["state"] == "down", h

    fwd.restore()

    wait_until_state(b, "up")
    assert counter(b, "connects") > conn0
    wait_counter(b, "catchups", catch0 + 1)
    assert counter(b, "received") == rec0, "the message cannot have come through the cut link"
    wait_miss(sb, b, "/programs")
    # Only what moved: entity_slices' generation did not.
    assert hit(sb, "/entity_slices"), "the catch-up dropped a family whose generation did not move"
    # And B is in the channel again.
    app0 = counter(b, "applied")
    write(sa, "POST", "/programs")
    wait_counter(b, "applied", app0 + 1)
    wait_miss(sb, b, "/programs")


def test_a_write_made_while_redis_is_down_is_published_when_it_is_back(redis, mock,
                                                                       daemon_factory, tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec)
    sa, sb = Sdk(a.port), Sdk(b.port)
    fill(sb, ["/programs", "/entity_slices"])
    pub0 = counter(a, "published")
    redis.save()                     # the restart below keeps epoch and generations

    redis.kill()
    for d in (a, b):
        wait_until_state(d, "down")
    write(sa, "POST", "/programs")   # nobody to tell yet
    assert hit(sb, "/programs")

    redis.restart(empty=False)

    for d in (a, b):
        wait_until_state(d, "up")
    wait_counter(a, "published", pub0 + 1)
    wait_miss(sb, b, "/programs")
    # Same epoch: only the family written was dropped.
    assert hit(sb, "/entity_slices"), "a Redis restarted with its data dropped everything"


def test_a_stalled_redis_never_holds_a_client_up(redis, mock, daemon_factory, tmp_path,
                                                 forwarders):
    fwd = forwarders(redis.sock_path)
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, fwd.spec)
    sa, sb = Sdk(a.port), Sdk(b.port)
    fill(sa, ["/entity_slices"])
    fill(sb, ["/programs"])

    fwd.stall()                      # B's link: open, and nothing moves either way

    # Every request on B is answered (the harness gives each 10 s).
    assert hit(sb, "/programs")
    fill(sb, ["/record_views"])
    write(sb, "PATCH", "/entity_slices/e1")
    purge(b, {"prefix": "/record_views"})
    status, h = health(b)
    assert status == 200 and h["cluster"]["state"] in ("up", "down"), h
    metrics(b)
    write(sa, "POST", "/programs")

    fwd.restore()

    # Both ways, nothing was lost: A's write reaches B, B's reaches A.
    wait_miss(sb, b, "/programs")
    wait_miss(sa, a, "/entity_slices")
    wait_until_state(b, "up")

    # Stopping with Redis stalled is prompt and clean (Daemon.stop fails
    # the test if it takes SIGKILL).
    fwd.stall()
    b.stop()


def test_an_instance_starts_without_redis_and_joins_when_it_appears(redis_factory, mock,
                                                                    daemon_factory, tmp_path):
    later = redis_factory(name="later", start=False)
    d = instance(daemon_factory, mock, tmp_path, "kdA", later.spec)
    s = Sdk(d.port)
    assert state(d) in ("connecting", "down")
    assert cluster(d)["state"] in ("connecting", "down")
    fill(s, ["/programs"])
    write(s, "POST", "/entity_slices")
    # A few attempts, refused, and a single warning about them.
    wait_counter(d, "errors", 4)
    assert state(d) in ("connecting", "down")
    lines = warnings(d)
    assert len(lines) == 1, "more than one cluster line within a minute:\n" + "\n".join(lines)

    later.start()

    wait_until_state(d, "up")
    assert counter(d, "connects") >= 1
    # Its first contact: what it cached may predate writes made elsewhere.
    wait_miss(s, d, "/programs")


def test_the_first_contact_after_a_restart_drops_what_the_file_kept(redis, mock, daemon_factory,
                                                                    tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec)
    sa, sb = Sdk(a.port), Sdk(b.port)
    fill(sb, ["/programs", "/entity_slices"])
    stored(b, "programs")
    stored(b, "entity_slices")
    b.stop()
    write(sa, "POST", "/programs")   # B does not hear of it
    b.start()
    sb = Sdk(b.port)
    # Redis was reachable at start: the catch-up came before the first answer.
    r = sb.get("/programs")
    assert r.status == 200 and xc(r) == "MISS", "B served what the file kept from before: %r" % r
    r = sb.get("/entity_slices")
    assert r.status == 200 and xc(r) == "MISS", r
    assert state(b) == "up"


def test_redis_restarted_empty_drops_everything(redis, mock, daemon_factory, tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec)
    targets = ["/programs", "/entity_slices", "/record_views"]
    sa, sb = Sdk(a.port), Sdk(b.port)
    for s in (sa, sb):
        fill(s, targets)
    before = {d.name: (counter(d, "connects"), counter(d, "catchups")) for d in (a, b)}

    redis.restart(empty=True)        # no writes anywhere: only the epoch says so

    for d in (a, b):
        conn0, catch0 = before[d.name]
        wait_counter(d, "connects", conn0 + 1)
        wait_counter(d, "catchups", catch0 + 1)
    for s, d in ((sa, a), (sb, b)):
        for t in targets:
            wait_miss(s, d, t)


# ---------------------------------------------------------------- password
PASSWORD = "rds-Pw-7c1e94ab0f"
WRONG = "rds-Wrong-55d2e0c3"


def test_password_from_the_environment_and_never_shown(redis_factory, mock, daemon_factory,
                                                        tmp_path):
    redis = redis_factory(password=PASSWORD)
    good = instance(daemon_factory, mock, tmp_path, "kdGood", redis.spec, password=PASSWORD)
    other = instance(daemon_factory, mock, tmp_path, "kdOther", redis.spec, password=PASSWORD)
    wrong = instance(daemon_factory, mock, tmp_path, "kdWrong", redis.spec, password=WRONG)
    none = instance(daemon_factory, mock, tmp_path, "kdNone", redis.spec)
    for d in (good, other):
        wait_until_state(d, "up")
    for d in (wrong, none):
        wait_until_state(d, "down")
        status, _ = health(d)
        assert status == 200
    # It works: a write on one reaches the other.
    so = Sdk(other.port)
    fill(so, ["/programs"])
    write(Sdk(good.port), "POST", "/programs")
    wait_miss(so, other, "/programs")
    # The wrong one says why, and serves anyway.
    wait_for(lambda: [ln for ln in warnings(wrong, "error|warning|info")
                      if re.search(r"authenticat\w*\W.{0,60}fail|fail\w*\W.{0,60}authenticat",
                                   ln, re.I)],
             timeout=WAIT, what="a cluster: line saying authentication failed in:\n%s"
             % wrong.log_tail(20))
    fill(Sdk(wrong.port), ["/entity_slices"])
    # Nowhere to be read.
    for d in (good, other, wrong, none):
        shown = [d.log(), json.dumps(d.stats()), json.dumps(health(d)[1]), metrics(d),
                 d.get("/_kaleidod/").body.decode("utf-8", "replace")]
        for text in shown:
            assert PASSWORD not in text and WRONG not in text, (d.name, text[-2000:])
    p = run_kaleidod(["--config", good.config_path, "--check-config"],
                     env={"KALEIDOSCOPE_API_CLIENT_SECRET": CLIENT_SECRET,
                          "KALEIDOD_REDIS_PASSWORD": PASSWORD})
    assert p.returncode == 0, p
    assert PASSWORD not in (p.stdout + p.stderr).decode("utf-8", "replace"), p


# ---------------------------------------------------------------- config
def config_file(tmp_path, cluster_kv):
    path = tmp_path / "k.conf"
    path.write_text(ini_text({"upstream": {"url": "http://127.0.0.1:9", "client_id": "x"},
                              "cache": {"file": str(tmp_path / "c.db")},
                              "cluster": cluster_kv}))
    return str(path)


URL_PASSWORD = "pw-in-url-93f0"


@pytest.mark.parametrize("kv,key", [
    ({"redis": "redis://user:%s@127.0.0.1:6379" % URL_PASSWORD}, "[cluster] redis"),
    ({"redis": "redis://:%s@127.0.0.1:6379" % URL_PASSWORD}, "[cluster] redis"),
    ({"redis": "http://x"}, "[cluster] redis"),
    ({"redis": "unix:relative/redis.sock"}, "[cluster] redis"),
    ({"redis": "redis://127.0.0.1"}, "[cluster] redis"),
    ({"redis": "unix:/run/redis/redis.sock", "prefix": "my lab"}, "[cluster] prefix"),
    ({"shared_cache": "yes"}, "[cluster] shared_cache needs [cluster] redis"),
    ({"redis": "unix:/run/redis/redis.sock", "shared_cache": "maybe"}, "shared_cache"),
    ({"share_token": "yes"}, "[cluster] share_token needs [cluster] redis"),
], ids=["user-password", "password", "http", "relative-socket", "no-port", "prefix-space",
        "shared-without-redis", "shared-not-boolean", "token-without-redis"])
def test_bad_cluster_settings_are_refused_naming_the_key(tmp_path, kv, key):
    path = config_file(tmp_path, kv)
    for args in (["--config", path, "--check-config"], ["--config", path]):
        p = run_kaleidod(args, env={"KALEIDOSCOPE_API_CLIENT_SECRET": "x"})
        err = p.stderr.decode("utf-8", "replace")
        assert p.returncode == 1, (args, p)
        assert key in err, (key, err)
        assert URL_PASSWORD not in err + p.stdout.decode("utf-8", "replace"), err


def test_good_cluster_settings_pass_the_check(tmp_path):
    path = config_file(tmp_path, {"redis": "redis://127.0.0.1:6379", "prefix": "lab-7:"})
    p = run_kaleidod(["--config", path, "--check-config"],
                     env={"KALEIDOSCOPE_API_CLIENT_SECRET": "x"})
    assert p.returncode == 0, p
    out = p.stdout.decode()
    assert "redis://127.0.0.1:6379" in out and "lab-7:" in out, out


def test_without_cluster_the_state_is_off(mock, daemon_factory, tmp_path):
    d = instance(daemon_factory, mock, tmp_path, "alone")
    s = Sdk(d.port)
    fill(s, ["/programs"])
    write(s, "POST", "/programs")
    status, h = health(d)
    assert status == 200 and h["cluster"]["state"] == "off", h
    cl = cluster(d)
    assert cl["state"] == "off", cl
    assert cl.get("published", 0) == 0, cl
    assert metric(metrics(d), "kaleidod_cluster_up") == 0
    assert not warnings(d), warnings(d)


# ---------------------------------------------------------------- namespaces
def test_workspaces_on_one_redis_keep_to_themselves(redis, mock, mock_factory, daemon_factory,
                                                    tmp_path):
    other_api = mock_factory()       # another upstream url: another default prefix
    a = instance(daemon_factory, mock, tmp_path, "kdA", redis.spec)
    b = instance(daemon_factory, mock, tmp_path, "kdB", redis.spec)
    c = instance(daemon_factory, other_api, tmp_path, "kdC", redis.spec)
    d = instance(daemon_factory, mock, tmp_path, "kdD", redis.spec, prefix="lab2:")
    e = instance(daemon_factory, mock, tmp_path, "kdE", redis.spec, prefix="lab3:")
    every = (a, b, c, d, e)
    for x in every:
        wait_until_state(x, "up")
    prefixes = {x.name: cluster(x)["prefix"] for x in every}
    assert prefixes["kdA"] == prefixes["kdB"], prefixes
    assert prefixes["kdD"] == "lab2:" and prefixes["kdE"] == "lab3:", prefixes
    assert len(set(prefixes.values())) == 4, prefixes
    sdks = {x.name: Sdk(x.port) for x in every}
    for x in (b, c, d, e):
        fill(sdks[x.name], ["/programs"])
    apps = {x.name: counter(x, "applied") for x in every}

    write(sdks["kdA"], "POST", "/programs")
    wait_miss(sdks["kdB"], b, "/programs")         # its own workspace heard it
    write(sdks["kdD"], "POST", "/programs")        # lab2: alone
    purge(d, {"all": True})
    wait_for(lambda: counter(d, "published") >= 2, timeout=WAIT, what="D's publishes")

    for x in (c, e):
        assert hit(sdks[x.name], "/programs"), "%s heard another workspace" % x.name
        assert counter(x, "applied") == apps[x.name], cluster(x)
    # Every key in Redis is under one of the prefixes.
    keys = redis.keys()
    assert keys and all(any(k.startswith(p) for p in prefixes.values()) for k in keys), keys


# ---------------------------------------------------------------- fan-out
def test_requests_right_after_a_write_all_succeed(redis, mock, daemon_factory, tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec)
    sa, sb = Sdk(a.port), Sdk(b.port)
    targets = ["/programs", "/programs/p1", "/programs/p2", "/entity_slices"]
    for s in (sa, sb):
        fill(s, targets)
        s.auth()
    app0 = counter(b, "applied")

    write(sa, "POST", "/programs")

    def one(i):
        s = (sa, sb)[i % 2]
        r = s.get(targets[i % len(targets)])
        return r.status, xc(r)

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as ex:
        got = list(ex.map(one, range(50)))
    bad = [g for g in got if not 200 <= g[0] < 300]
    assert not bad, got
    # Once B applied the write, neither instance answers what the API no
    # longer says, whatever the fan-out fetched meanwhile.
    wait_counter(b, "applied", app0 + 1)
    for s, d in ((sa, a), (sb, b)):
        for t in targets:
            r = s.get(t)
            assert r.status == 200, r
            assert r.body == mock.direct_get(t).body, (d.name, t, xc(r), r.body[:200])
        assert state(d) == "up"


# ---------------------------------------------------------------- Redis refuses
def test_a_publish_redis_refuses_waits_and_the_link_stays(redis, mock, daemon_factory, tmp_path):
    """Redis refusing the publishing script (an ACL without EVAL, a read-only
    replica, out of memory) is not a lost link: the instance stays joined
    and keeps receiving, its invalidation waits with backoff, one warning
    says why, and it goes out once Redis takes it."""
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec)
    sa, sb = Sdk(a.port), Sdk(b.port)
    fill(sb, ["/programs"])
    connects0, pub0 = counter(a, "connects"), counter(a, "published")
    redis.command("ACL", "SETUSER", "default", "-eval")
    try:
        write(sa, "POST", "/programs")
        wait_counter(a, "errors", 1)
        cl = cluster(a)
        assert cl["state"] == "up" and cl["pending"] == 1, cl
        assert "NOPERM" in (cl["last_error"] or ""), cl
        assert hit(sb, "/programs"), "B dropped programs though nothing was published"
        # Refused again and again (with backoff): still one line, no reconnecting.
        wait_counter(a, "errors", 3)
        assert counter(a, "connects") == connects0
        assert len([ln for ln in warnings(a) if "refuses to publish" in ln]) == 1, warnings(a)
    finally:
        redis.command("ACL", "SETUSER", "default", "+eval")
    wait_counter(a, "published", pub0 + 1)
    assert cluster(a)["pending"] == 0
    wait_miss(sb, b, "/programs")


def test_a_generation_handed_out_again_is_still_a_change(redis, mock, daemon_factory, tmp_path,
                                                        forwarders):
    """Redis restored from an older snapshot keeps the epoch but forgets
    the last bumps, so the next bump would repeat a count an instance cut
    off meanwhile already knows.  The nonce in each generation makes it a
    change all the same: B, cut off across the restore and the write after
    it, drops the family when it is back."""
    fwd = forwarders(redis.sock_path)
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, fwd.spec)
    sa, sb = Sdk(a.port), Sdk(b.port)
    fill(sb, ["/programs"])
    redis.save()                     # the snapshot: programs never bumped
    app0 = counter(b, "applied")
    write(sa, "POST", "/programs")   # count 1, heard by B
    wait_counter(b, "applied", app0 + 1)
    wait_miss(sb, b, "/programs")
    assert hit(sb, "/programs")

    fwd.cut()
    wait_until_state(b, "down")
    redis.restart(empty=False)       # back to the snapshot, same epoch
    wait_until_state(a, "up")
    pub0 = counter(a, "published")
    write(sa, "POST", "/programs")   # count 1 again, another nonce; B is away
    wait_counter(a, "published", pub0 + 1)
    assert hit(sb, "/programs")

    catch0 = counter(b, "catchups")
    fwd.restore()
    wait_until_state(b, "up")
    wait_counter(b, "catchups", catch0 + 1)
    wait_miss(sb, b, "/programs")


# ---------------------------------------------------------------- shared limits
def test_an_accounts_rate_limit_holds_across_instances(redis, mock, daemon_factory, tmp_path):
    """A gateway account's rate is the cluster's, not each instance's: what
    it spent through A is spent on B too, and back."""
    from test_gateway import account_add, bearer, login
    acc = str(tmp_path / "accounts")
    secret = account_add(acc, "robot", "--scope", "read", "--rate", "10/h")
    cfg = {"gateway": {"accounts": acc}}
    a = instance(daemon_factory, mock, tmp_path, "kdA", redis.spec, config=cfg)
    b = instance(daemon_factory, mock, tmp_path, "kdB", redis.spec, config=cfg)
    for d in (a, b):
        wait_until_state(d, "up")
    ta = login(a.port, "robot", secret).json()["access_token"]
    tb = login(b.port, "robot", secret).json()["access_token"]

    def get(d, tok, n):
        return [d.request("GET", "/programs", bearer(tok)).status for _ in range(n)]

    assert get(a, ta, 6) == [200] * 6
    wait_counter(b, "shared_in", 6)
    # B's bucket of 10 (refilled one every 6 minutes) has 4 left.
    assert get(b, tb, 6) == [200] * 4 + [429] * 2
    wait_counter(a, "shared_in", 4)
    assert get(a, ta, 1) == [429]
    assert counter(a, "shared_out") == 6 and counter(b, "shared_out") == 4
    m = metrics(b)
    assert metric(m, "kaleidod_cluster_account_requests_total", 'direction="in"') == 6


def test_failed_logins_from_an_address_count_on_every_instance(redis, mock, daemon_factory,
                                                               tmp_path):
    """The guard against guessing is the cluster's: wrong secrets sent to A
    from one address leave that address fewer tries on B."""
    from test_gateway import account_add, login
    acc = str(tmp_path / "accounts")
    secret = account_add(acc, "alice", "--scope", "read")
    cfg = {"gateway": {"accounts": acc}}
    a = instance(daemon_factory, mock, tmp_path, "kdA", redis.spec, config=cfg)
    b = instance(daemon_factory, mock, tmp_path, "kdB", redis.spec, config=cfg)
    for d in (a, b):
        wait_until_state(d, "up")
    assert [login(a.port, "alice", "guess-%d" % i, source="127.0.0.3").status
            for i in range(6)] == [401] * 6
    wait_counter(b, "failed_logins_in", 6)
    # A lone instance would hash 10 guesses from the address (a burst of
    # 10, then one every 6 s); B has 4 left (more only if the test took
    # many seconds).
    statuses = [login(b.port, "alice", "guess-b%d" % i, source="127.0.0.3").status
                for i in range(10)]
    assert 429 in statuses[:7], statuses
    assert login(b.port, "alice", secret, source="127.0.0.4").status == 200


# ---------------------------------------------------------------- shared cache
def shared(d):
    """The stats' shared_cache counters."""
    return cluster(d)["shared_cache"]


def wait_shared(d, name, at_least, timeout=WAIT):
    return wait_for(lambda: shared(d)[name] >= at_least, timeout=timeout, interval=0.02,
                    what="%s's shared_cache %s >= %d" % (d.name, name, at_least))


def test_with_the_shared_cache_b_gets_what_a_fetched_without_the_api(redis, mock,
                                                                     daemon_factory, tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, shared=True)
    sa, sb = Sdk(a.port), Sdk(b.port)
    ra = sa.get("/programs")
    assert ra.status == 200 and xc(ra) == "MISS", ra
    assert mock.count("GET /programs") == 1
    wait_shared(a, "stored", 1)
    assert shared(a)["fetches"] == 1, shared(a)

    rb = sb.get("/programs")

    assert rb.status == 200 and xc(rb) == "MISS", rb    # B's own levels had it not
    assert rb.body == ra.body and rb.header("ETag") == ra.header("ETag"), (ra, rb)
    assert mock.count("GET /programs") == 1, "B asked the API for what A had fetched"
    assert shared(b)["hits"] == 1, shared(b)
    assert metric(metrics(b), "kaleidod_cluster_shared_cache_total", 'result="hit"') == 1
    # Then B's own: in memory, and in its file, compressed copy and all.
    assert hit(sb, "/programs")
    stored(b, "programs")
    rz = sb.get("/programs", headers=[("Accept-Encoding", "gzip")])
    assert rz.status == 200 and rz.header("Content-Encoding") == "gzip", rz
    assert mock.count("GET /programs") == 1
    # One key in Redis for the one list, under the workspace's prefix.
    pfx = cluster(a)["prefix"]
    values = [k for k in redis.keys() if k.startswith(pfx + ":l2:")]
    assert len(values) == 1 and not values[0].endswith(":lease"), redis.keys()


def test_50_clients_over_two_instances_make_one_upstream_fetch(redis, mock, daemon_factory,
                                                                tmp_path):
    from test_coalescing import Clients, fam_stats
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, shared=True)
    sa, sb = Sdk(a.port), Sdk(b.port)
    sa.auth()
    sb.auth()
    base = {d.name: fam_stats(d, "record_views")["requests"] for d in (a, b)}
    mock.hold("/record_views")
    ca = Clients(sa, ["/record_views"] * 25)
    cb = Clients(sb, ["/record_views"] * 25)
    try:
        for d in (a, b):
            wait_for(lambda: fam_stats(d, "record_views")["requests"] >= base[d.name] + 25,
                     timeout=WAIT, what="25 requests at %s" % d.name)
        # one instance holds the lease and its fetch is held at the API;
        # the other waits for it
        wait_for(lambda: mock.stats()["held"] >= 1, timeout=WAIT, what="a fetch held")
        wait_for(lambda: shared(a)["waits"] + shared(b)["waits"] >= 1, timeout=WAIT,
                 what="one instance waiting for the other's fetch")
        held, n = mock.stats()["held"], mock.count("GET /record_views")
    finally:
        mock.release()
        results = ca.join() + cb.join()
    assert (held, n) == (1, 1), "%d fetches held, %d seen, for 50 clients over 2" % (held, n)
    assert {r.status for r in results} == {200}, results[:3]
    assert len({r.body for r in results}) == 1, "clients got different lists"
    assert mock.count("GET /record_views") == 1
    st = sorted((shared(a)["fetches"], shared(b)["fetches"]))
    hits = shared(a)["hits"] + shared(b)["hits"]
    assert st == [0, 1] and hits == 1, (shared(a), shared(b))


@pytest.mark.parametrize("how", ["write", "purge family", "purge prefix", "purge all"])
def test_a_write_or_purge_anywhere_hides_the_shared_copy(redis, mock, daemon_factory, tmp_path,
                                                         how):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, shared=True)
    c = instance(daemon_factory, mock, tmp_path, "kdC", redis.spec, shared=True)
    wait_until_state(c, "up")
    sa, sb, sc = Sdk(a.port), Sdk(b.port), Sdk(c.port)
    old = sa.get("/programs/p1")
    assert old.status == 200 and "(gen 1)" in old.body.decode(), old
    wait_shared(a, "stored", 1)
    gets = mock.count("GET /programs/p1")

    pub = counter(b, "published")
    if how == "write":
        write(sb, "POST", "/programs")
    else:
        purge(b, {"purge family": {"family": "programs"},
                  "purge prefix": {"prefix": "/programs/p"},
                  "purge all": {"all": True}}[how])
    # B has told Redis (what the cluster promises is from then on)
    wait_for(lambda: counter(b, "published") > pub and cluster(b)["pending"] == 0,
             timeout=WAIT, interval=0.02, what="B's %s published" % how)

    # C never read it: its first read asks the API, not Redis's old copy.
    r = sc.get("/programs/p1")
    assert r.status == 200, r
    assert mock.count("GET /programs/p1") == gets + 1, "C was served the shared copy after %s" % how
    if how == "write":
        assert "(gen 2)" in r.body.decode(), r.body[:200]
    assert shared(c)["hits"] == 0, shared(c)
    # and A, once it has heard, reads the same new list (from C's store or
    # the API), never its own old one
    wait_miss(sa, a, "/programs/p1")
    assert sa.get("/programs/p1").body == r.body


def test_the_shared_cache_with_redis_killed_goes_to_the_api_without_errors(redis, mock,
                                                                           daemon_factory,
                                                                           tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, shared=True)
    sa, sb = Sdk(a.port), Sdk(b.port)
    fill(sa, ["/programs"])
    wait_shared(a, "stored", 1)

    redis.kill()

    for d in (a, b):
        wait_until_state(d, "down")
    # Misses on both, no client-visible error: each goes to the API alone.
    for s in (sa, sb):
        for t in ("/entity_slices", "/record_views"):
            r = s.get(t)
            assert r.status == 200 and xc(r) == "MISS", (t, r)
    assert hit(sa, "/programs")
    assert shared(b)["alone"] >= 2 and shared(b)["hits"] == 0, shared(b)

    redis.restart(empty=True)
    for d in (a, b):
        wait_until_state(d, "up")
    # Back in business: what A fetches now, B takes from Redis.
    kept = shared(a)["stored"]
    r = sa.get("/key_fields")
    assert r.status == 200 and xc(r) == "MISS", r
    wait_shared(a, "stored", kept + 1)
    gets = mock.count("GET /key_fields")
    r = sb.get("/key_fields")
    assert r.status == 200 and mock.count("GET /key_fields") == gets, r


def test_a_damaged_value_in_redis_is_never_served(redis, mock, daemon_factory, tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, shared=True)
    sa, sb = Sdk(a.port), Sdk(b.port)
    good = sa.get("/programs")
    assert good.status == 200, good
    wait_shared(a, "stored", 1)
    pfx = cluster(a)["prefix"]
    key = [k for k in redis.keys() if k.startswith(pfx + ":l2:")][0]
    value = redis.command("GET", key)
    # The generations and expiry left as they are (so the script hands it
    # out); the body cut short.
    redis.command("SET", key, value[:-10])
    gets = mock.count("GET /programs")

    r = sb.get("/programs")

    assert r.status == 200 and r.body == good.body, r
    assert mock.count("GET /programs") == gets + 1
    assert shared(b)["errors"] >= 1 and shared(b)["hits"] == 0, shared(b)
    assert key not in redis.keys(), "the damaged value stayed"
    assert any("not one this instance can take" in ln for ln in b.log().splitlines())


# ---------------------------------------------------------------- shared token
def grants(mock):
    return len(mock.tokens()["grants"])


def test_share_token_one_grant_for_three_instances(redis, mock, daemon_factory, tmp_path):
    from test_coalescing import Clients
    cfg = {"cluster": {"redis": redis.spec, "share_token": "yes"}}
    ds = [daemon_factory(mock, name=n, cache_file=str(tmp_path / (n + ".db")),
                         config=dict(cfg, log={"level": "debug"}) if n == "kdA" else cfg,
                         env={"KALEIDOD_REDIS_PASSWORD": ""}).start()
          for n in ("kdA", "kdB", "kdC")]
    for d in ds:
        wait_until_state(d, "up")
    # Every instance reaches the API with a token...
    for i, d in enumerate(ds):
        r = Sdk(d.port).get("/records/r%d" % i)
        assert r.status == 200, (d.name, r)
        wait_for(lambda: health(d)[1]["upstream"]["auth"]["state"] == "ok", timeout=WAIT,
                 what="%s's token" % d.name)
    # ... and the API granted one.
    assert grants(mock) == 1, mock.tokens()["grants"]
    tokens = lambda: [cluster(d)["shared_token"] for d in ds]
    assert (sum(t["taken"] for t in tokens()), sum(t["stored"] for t in tokens())) == (2, 1), \
        tokens()
    tok = mock.tokens()["access"][0]
    pfx = cluster(ds[0])["prefix"]
    assert redis.command("GET", pfx + ":token") == tok.encode()
    # kdA logs at debug level, with libcurl's trace of every exchange
    for d in ds:
        assert tok not in d.log(), "%s logged the shared token" % d.name

    # The token revoked, requests on all three at once: the first instance
    # to get a 401 logs in, the others wait for its token or find it.
    taken0 = sum(t["taken"] for t in tokens())
    mock.revoke()
    clients = [Clients(Sdk(d.port), ["/records/s%d-%d" % (i, k) for k in range(4)])
               for i, d in enumerate(ds)]
    results = [r for c in clients for r in c.join()]
    assert {r.status for r in results} == {200}, results[:3]
    assert grants(mock) == 2, mock.tokens()["grants"]
    assert sum(t["taken"] for t in tokens()) == taken0 + 2, tokens()
    new = mock.tokens()["access"][-1]
    assert redis.command("GET", pfx + ":token") == new.encode()
    for d in ds:
        assert new not in d.log(), "%s logged the shared token" % d.name


def test_share_token_with_redis_down_each_instance_logs_in_alone(redis_factory, mock,
                                                                 daemon_factory, tmp_path):
    redis = redis_factory(start=False)
    cfg = {"cluster": {"redis": redis.spec, "share_token": "yes"}}
    a, b = [daemon_factory(mock, name=n, cache_file=str(tmp_path / (n + ".db")), config=cfg,
                           env={"KALEIDOD_REDIS_PASSWORD": ""}).start()
            for n in ("kdA", "kdB")]
    for i, d in enumerate((a, b)):
        r = Sdk(d.port).get("/records/r%d" % i)
        assert r.status == 200, (d.name, r)
        assert cluster(d)["shared_token"] == {"taken": 0, "waits": 0, "stored": 0}
    assert grants(mock) == 2, mock.tokens()["grants"]

    # Redis comes: the next login is shared.
    redis.start()
    for d in (a, b):
        wait_until_state(d, "up")
    mock.revoke()
    r = Sdk(a.port).get("/records/x")
    assert r.status == 200, r
    # (stored once A's login is over: a moment after its answer)
    wait_for(lambda: cluster(a)["shared_token"]["stored"] == 1, timeout=WAIT,
             what="A's token stored")
    r = Sdk(b.port).get("/records/y")
    assert r.status == 200, r
    assert cluster(b)["shared_token"]["taken"] == 1, cluster(b)
    assert grants(mock) == 3, mock.tokens()["grants"]


def test_a_redis_restored_from_a_snapshot_never_serves_what_a_write_replaced(redis, mock,
                                                                            daemon_factory,
                                                                            tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, shared=True)
    sa, sb = Sdk(a.port), Sdk(b.port)
    old = sa.get("/programs/p1")
    assert old.status == 200 and "(gen 1)" in old.body.decode(), old
    wait_shared(a, "stored", 1)
    redis.save()                       # the snapshot holds the old list and its generation
    pub = counter(b, "published")
    write(sb, "POST", "/programs")
    wait_for(lambda: counter(b, "published") > pub and cluster(b)["pending"] == 0,
             timeout=WAIT, interval=0.02, what="B's write published")

    conn0 = {d.name: counter(d, "connects") for d in (a, b)}
    redis.restart(empty=False)         # back to before the write, same epoch

    for d in (a, b):
        wait_counter(d, "connects", conn0[d.name] + 1)
        wait_until_state(d, "up")
        wait_for(lambda: cluster(d)["pending"] == 0, timeout=WAIT, interval=0.02,
                 what="%s's generations moved on" % d.name)
    # The first to rejoin that knew the later count (B, which published
    # it, always does) moved the generation on; the other then finds it
    # moved, not back.
    assert any("went back in time" in ln for d in (a, b) for ln in d.log().splitlines()), \
        (a.log_tail(20), b.log_tail(20))
    gets = mock.count("GET /programs/p1")
    # B never held p1: its first read asks Redis, whose old value is hidden.
    r = sb.get("/programs/p1")
    assert r.status == 200 and "(gen 2)" in r.body.decode(), r.body[:200]
    assert mock.count("GET /programs/p1") == gets + 1 and shared(b)["hits"] == 0, shared(b)
    # A, which did, drops it once it hears, and never gets it back from Redis.
    wait_miss(sa, a, "/programs/p1")
    r = sa.get("/programs/p1")
    assert r.status == 200 and "(gen 2)" in r.body.decode(), r.body[:200]


def test_a_fetch_that_ran_across_a_write_is_not_shared(redis, mock, daemon_factory, tmp_path):
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, shared=True)
    c = instance(daemon_factory, mock, tmp_path, "kdC", redis.spec, shared=True)
    wait_until_state(c, "up")
    sa, sb, sc = Sdk(a.port), Sdk(b.port), Sdk(c.port)
    sa.auth()
    mock.hold("/programs/p1")
    from test_coalescing import Clients
    reader = Clients(sa, ["/programs/p1"])
    try:
        wait_for(lambda: mock.stats()["held"] >= 1, timeout=WAIT, what="A's fetch held")
        pub = counter(b, "published")
        write(sb, "POST", "/programs")      # not held: another path
        wait_for(lambda: counter(b, "published") > pub and cluster(b)["pending"] == 0,
                 timeout=WAIT, interval=0.02, what="B's write published")
        stored0 = shared(a)["stored"]
    finally:
        mock.release()
    r = reader.join()[0]
    assert r.status == 200, r
    # A's fetch began under the old generation: what it got is not stored
    # for the cluster (the keep script compares), whatever it holds.
    wait_for(lambda: shared(a)["fetches"] == 1, timeout=WAIT, what="A's fetch counted")
    gets = mock.count("GET /programs/p1")
    r = sc.get("/programs/p1")
    assert r.status == 200 and mock.count("GET /programs/p1") == gets + 1, r
    assert shared(a)["stored"] == stored0 and shared(c)["hits"] == 0, (shared(a), shared(c))


def test_a_request_that_carries_a_vary_field_is_not_given_the_shared_variant(redis, mock,
                                                                            daemon_factory,
                                                                            tmp_path):
    mock.config(extra_headers=[["Vary", "X-Lab"]])
    a, b = pair(daemon_factory, mock, tmp_path, redis.spec, shared=True)
    sa, sb = Sdk(a.port), Sdk(b.port)
    plain = sa.get("/programs")
    assert plain.status == 200, plain
    wait_shared(a, "stored", 1)
    gets = mock.count("GET /programs")

    r = sb.get("/programs", headers=[("X-Lab", "north")])

    assert r.status == 200, r
    assert mock.count("GET /programs") == gets + 1, "B served the shared variant"
    # and one without the field still takes the shared one
    r = sb.get("/programs")
    assert r.status == 200 and r.body == plain.body and mock.count("GET /programs") == gets + 1
