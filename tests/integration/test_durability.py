"""The cache file survives what happens to files:
- a file of the previous schema (user_version 1) is migrated in place;
- 50 times kill -9 while the cache is being written under load: the file
  passes PRAGMA integrity_check every time, and kaleidod restarts on it
  and serves;
- a directory where the file should be, a read-only filesystem, a full
  one (RLIMIT_FSIZE): kaleidod keeps proxying correct answers, stays up,
  and says so in one warning line, not one per request.
(Corrupt and foreign files, and files of a newer schema, are in
test_lifecycle.py.)
"""

import glob
import itertools
import os
import random
import re
import resource
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest

from harness import Sdk, cache_warnings, run_kaleidod, sql, sql_one, wait_for

V1_SCHEMA = """
CREATE TABLE entries (key TEXT PRIMARY KEY, family TEXT NOT NULL, status INTEGER NOT NULL,
                      headers BLOB NOT NULL, body BLOB NOT NULL, stored_at INTEGER NOT NULL,
                      expires_at INTEGER NOT NULL);
CREATE INDEX entries_family ON entries(family);
PRAGMA user_version = 1;
"""


def xc(r):
    return r.header("X-Cache")


def integrity(path):
    return sql(path, "PRAGMA integrity_check")


def moved_aside(path):
    return [p for p in glob.glob(path + ".bad-*") if not p.endswith(("-wal", "-shm"))]


def serves_correctly(d, mock, targets, rounds=3):
    """Every target, several times, answers 200 with what the API itself
    answers (the families' bodies depend on the path only)."""
    s = Sdk(d.port)
    want = {t: mock.direct_get(t).body for t in targets}
    n = 0
    for _ in range(rounds):
        for t in targets:
            r = s.get(t)
            assert r.status == 200, (t, r)
            assert r.body == want[t], "wrong body for %s: %r" % (t, r)
            n += 1
    r = s.get("/activities/still-forwarding")
    assert r.status == 200 and r.json()["target"] == "/activities/still-forwarding", r
    assert d.proc.poll() is None, "kaleidod died:\n" + d.log_tail()
    return n


def check_one_warning(d, requests):
    w = cache_warnings(d)
    assert w, "no warning about the cache in the log:\n" + d.log_tail()
    assert len(w) <= 2, "%d cache warnings for %d requests (want one):\n%s" % (
        len(w), requests, "\n".join(w))
    return w


# ---------------------------------------------------------------- schema
def test_version_1_file_is_migrated_in_place(daemon_factory, mock, tmp_path):
    path = str(tmp_path / "cache.db")
    db = sqlite3.connect(path)
    try:
        db.executescript(V1_SCHEMA)
        now = int(time.time())
        db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ("v1-entry", "programs", 200, b"Content-Type: application/json\r\n",
                    b"[]", now, now + 300))
        db.commit()
    finally:
        db.close()
    inode = os.stat(path).st_ino
    d = daemon_factory(mock, cache_file=path).start()
    assert sql_one(path, "PRAGMA user_version") == 2
    assert moved_aside(path) == [], os.listdir(str(tmp_path))
    assert os.stat(path).st_ino == inode, "the file was replaced, not migrated"
    assert "moved it aside" not in d.log(), d.log_tail()
    s = Sdk(d.port)
    a, b = s.get("/programs"), s.get("/programs")
    assert (a.status, xc(a)) == (200, "MISS"), a
    assert (b.status, xc(b)) == (200, "HIT") and b.body == a.body, b
    assert integrity(path) == [("ok",)]
    d.restart()
    assert xc(Sdk(d.port).get("/programs")) == "HIT"
    assert sql_one(path, "PRAGMA user_version") == 2


# ---------------------------------------------------------------- kill -9
ROUNDS = 50


class Load:
    """Threads writing to the cache through kaleidod until stopped: misses
    of distinct keys in all three families (large record views), and
    writes that invalidate."""

    keys = itertools.count()

    def __init__(self, port, seed, threads=4):
        self.sdk = Sdk(port)
        self.sdk.auth()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(seed * 10 + i,))
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def one(self, rng):
        k = rng.random()
        n = next(self.keys)
        if k < 0.35:
            self.sdk.get("/programs?page=%d" % n)
        elif k < 0.6:
            self.sdk.get("/record_views?page=%d" % n)
        elif k < 0.8:
            self.sdk.get("/entity_slices?page=%d" % n)
        elif k < 0.95:
            self.sdk.post("/push/imports", {"key_field_names": ["k"], "data": [],
                                             "record_view_ids": []})
        else:
            self.sdk.request("POST", "/_kaleidod/purge", {"prefix": "/programs"})

    def run(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                self.one(rng)
            except Exception:   # the daemon was killed under it
                if self.stop.wait(0.01):
                    return

    def end(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads)


def check_copy(path, scratch):
    """integrity_check on a copy of the file as the crash left it (with its
    WAL, without the shared-memory index), so that the original stays
    exactly as kaleidod will find it on restart."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    copy = os.path.join(scratch, "cache.db")
    for suffix in ("", "-wal"):
        if os.path.exists(path + suffix):
            shutil.copyfile(path + suffix, copy + suffix)
    return integrity(copy)


@pytest.mark.slow
def test_kill_9_while_writing_50_times_leaves_a_sound_file(daemon_factory, mock, tmp_path):
    seed = int(os.environ.get("KD_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    mock.config(record_views_bytes=256 * 1024)
    d = daemon_factory(mock, config={"cache": {"max_size": "4M", "maintenance_interval": "1"},
                                     "log": {"level": "info"}})
    scratch = str(tmp_path / "check")
    for i in range(ROUNDS):
        what = "round %d of %d (KD_SEED=%d)" % (i + 1, ROUNDS, seed)
        d.start()
        r = Sdk(d.port).get("/programs")
        assert r.status == 200, "%s: after restart %r" % (what, r)
        load = Load(d.port, rng.randrange(1 << 20))
        try:
            # Kill after a random number of API requests: somewhere in the
            # middle of stores, invalidations, evictions.
            base = mock.stats()["total"]
            target = rng.randint(1, 30)
            wait_for(lambda: mock.stats()["total"] >= base + target, timeout=20,
                     what="%d requests at the API (%s)" % (target, what))
            d.kill()
        finally:
            load.end()
        assert check_copy(d.cache_file, scratch) == [("ok",)], what
        assert moved_aside(d.cache_file) == [], "%s: file moved aside:\n%s" % (
            what, d.log_tail())
    d.start()
    s = Sdk(d.port)
    assert s.get("/programs").status == 200
    assert moved_aside(d.cache_file) == [], d.log_tail()
    a = s.get("/entity_slices?after=kill")
    assert xc(a) == "MISS"
    wait_for(lambda: xc(s.get("/entity_slices?after=kill")) == "HIT", timeout=5,
             what="the cache to work after 50 crashes")
    d.stop()
    assert integrity(d.cache_file) == [("ok",)]


def test_purge_cli_under_write_load_is_safe(daemon_factory, mock):
    # kaleidod --purge writes the file while the daemon is writing it too:
    # both must wait for each other, not fail or damage the file.
    mock.config(record_views_bytes=256 * 1024)
    d = daemon_factory(mock, config={"log": {"level": "info"}}).start()
    load = Load(d.port, 7)
    try:
        for i in range(3):
            base = mock.stats()["total"]
            wait_for(lambda: mock.stats()["total"] >= base + 10, timeout=20,
                     what="writes in progress")
            p = run_kaleidod(["--purge", "all", "--cache", d.cache_file])
            assert p.returncode == 0, (i, p)
            assert re.search(rb"purged \d+", p.stdout), (i, p)
    finally:
        load.end()
    assert d.proc.poll() is None, d.log_tail()
    assert Sdk(d.port).get("/programs").status == 200
    assert integrity(d.cache_file) == [("ok",)]


# ---------------------------------------------------------------- bad places
TARGETS = ["/programs", "/entity_slices", "/record_views?page=1"]


def test_directory_where_the_file_should_be(daemon_factory, mock, tmp_path):
    path = str(tmp_path / "cache.db")
    os.mkdir(path)
    with open(os.path.join(path, "keep"), "w") as f:
        f.write("not the daemon's\n")
    d = daemon_factory(mock, cache_file=path, config={"log": {"level": "info"}}).start()
    n = serves_correctly(d, mock, TARGETS)
    w = check_one_warning(d, n)
    assert any(path in line for line in w), "the warning does not name the file: %r" % w
    kept = [os.path.join(path, "keep")] + [os.path.join(p, "keep") for p in moved_aside(path)]
    assert any(os.path.exists(k) for k in kept), "the directory's content was lost"


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory that can be made read-only for real: a tmpfs remounted
    read-only when running as root (permission bits do not stop root),
    else permission bits.  Yields (directory, make_readonly)."""
    where = tmp_path / "ro"
    where.mkdir()
    mounted = False
    if os.geteuid() == 0:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs",
                            str(where)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            pytest.skip("running as root and cannot mount a tmpfs (%s): no read-only "
                        "filesystem to test on" % p.stdout.decode().strip())
        mounted = True

    def make_readonly():
        if mounted:
            p = subprocess.run(["mount", "-o", "remount,ro", str(where)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert p.returncode == 0, p.stdout
        else:
            for name in os.listdir(str(where)):
                os.chmod(os.path.join(str(where), name), 0o444)
            os.chmod(str(where), 0o555)
        try:
            with open(os.path.join(str(where), "probe"), "w"):
                pass
        except OSError:
            return
        raise AssertionError("%s is still writable" % where)

    try:
        yield str(where), make_readonly
    finally:
        if mounted:
            if subprocess.run(["umount", str(where)]).returncode != 0:
                subprocess.run(["umount", "-l", str(where)])
        else:
            os.chmod(str(where), 0o755)


@pytest.mark.parametrize("existing", [False, True], ids=["no-file", "existing-file"])
def test_read_only_filesystem(readonly_dir, daemon_factory, mock, existing):
    where, make_readonly = readonly_dir
    path = os.path.join(where, "cache.db")
    d = daemon_factory(mock, cache_file=path, config={"log": {"level": "info"}})
    if existing:
        d.start()
        assert xc(Sdk(d.port).get("/programs")) == "MISS"
        d.stop()
    make_readonly()
    d.start()
    n = serves_correctly(d, mock, TARGETS)
    check_one_warning(d, n)


def test_full_filesystem(daemon_factory, mock, tmp_path):
    limit = 64 * 1024

    def small_files():
        # Writes past 64 KiB fail with EFBIG (or kill with SIGXFSZ, which
        # the harness leaves at its default: kaleidod must ignore it).
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    d = daemon_factory(mock, preexec_fn=small_files, config={"log": {"level": "info"}}).start()
    targets = ["/record_views?page=%d" % i for i in range(12)] + ["/programs"]
    n = serves_correctly(d, mock, targets, rounds=2)
    w = check_one_warning(d, n)
    for suffix in ("", "-wal"):
        if os.path.exists(d.cache_file + suffix):
            assert os.path.getsize(d.cache_file + suffix) <= limit, suffix
    assert d.health()["status"] in ("ok", "degraded")
    # Still one line after more failed stores.
    n += serves_correctly(d, mock, ["/record_views?page=%d" % i for i in range(12, 20)], 1)
    assert len(cache_warnings(d)) == len(w), cache_warnings(d)
