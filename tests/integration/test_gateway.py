"""The shared-lab gateway: local accounts, their tokens, scopes, paths,
rates, revocation on reload, the listen-address guard, and the audit
trail.  Real daemon, real sockets, the accounts file made by kaleidod's own
`account` command."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.parse

import pytest

from harness import (CLIENT_SECRET, KALEIDOD, Sdk, clean_env, request, run_kaleidod,
                     wait_for)


def slurp(path, mode="r", **kw):
    """A file's whole content, the file closed."""
    with open(path, mode, **kw) as f:
        return f.read()


# ---------------------------------------------------------------- helpers

def account_add(path, name, *args):
    """kaleidod account add; the secret it printed."""
    p = run_kaleidod(["account", "--accounts", path, "add", name] + list(args))
    assert p.returncode == 0, p.stderr.decode()
    m = re.search(r"client secret: (\S+)", p.stdout.decode())
    assert m, p.stdout
    return m.group(1)


def login(port, client_id, secret, body_type="form", source=None):
    fields = {"grant_type": "client_credentials", "client_id": client_id,
              "client_secret": secret}
    if body_type == "json":
        return request(port, "POST", "/auth/oauth/token",
                       [("Content-Type", "application/json")], json.dumps(fields).encode(),
                       source=source)
    return request(port, "POST", "/auth/oauth/token",
                   [("Content-Type", "application/x-www-form-urlencoded")],
                   urllib.parse.urlencode(fields).encode(), source=source)


def bearer(token, header="Authorization"):
    return [(header, "Bearer " + token)]


def reload_and_wait(d):
    """SIGHUP, and wait for the gateway's line about it."""
    before = slurp(d.log_path, errors="replace").count("SIGHUP: ")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: slurp(d.log_path, errors="replace").count("SIGHUP: ") >= before + 2,
             timeout=10, what="the reload's log lines")


@pytest.fixture
def lab(tmp_path, mock, daemon_factory):
    """A gateway with three accounts: alice (read,write), reader (read),
    admin (read,admin); returns (daemon, {name: secret}, accounts path)."""
    acc = str(tmp_path / "accounts")
    secrets = {
        "alice": account_add(acc, "alice", "--scope", "read,write", "--comment",
                             "Alice Example <alice@lab.example>"),
        "reader": account_add(acc, "reader", "--scope", "read"),
        "admin": account_add(acc, "admin", "--scope", "read,admin"),
    }
    audit = str(tmp_path / "audit.log")
    d = daemon_factory(mock, config={"gateway": {"accounts": acc,
                                                 "admin_from_loopback": "no"},
                                     "log": {"audit": audit}}).start()
    d.audit_path = audit
    return d, secrets, acc


def admin_stats(d, secrets):
    """/_kaleidod/stats as the admin account (loopback is not trusted in lab)."""
    r = request(d.port, "GET", "/_kaleidod/stats", bearer(token_of(d, "admin", secrets)))
    assert r.status == 200, r
    return r.json()


def token_of(d, name, secrets):
    r = login(d.port, name, secrets[name])
    assert r.status == 200, r
    return r.json()["access_token"]


# ---------------------------------------------------------------- accounts file

def test_account_commands_store_only_a_yescrypt_hash(tmp_path):
    acc = str(tmp_path / "accounts")
    secret = account_add(acc, "robot-1", "--scope", "read", "--path", "/push/imports",
                         "--rate", "10/m", "--comment", "nightly importer")
    text = slurp(acc)
    assert secret not in text
    line = text.strip().split("\n")[-1]
    name, h, scopes, paths, rate, cert, comment = line.split(":", 6)
    assert (name, scopes, paths, rate, cert, comment) == \
        ("robot-1", "read", "/push/imports", "10/m", "", "nightly importer")
    assert h.startswith("$y$")
    assert oct(os.stat(acc).st_mode & 0o777) == "0o600"
    listed = run_kaleidod(["account", "--accounts", acc, "list"])
    assert listed.returncode == 0
    out = listed.stdout.decode()
    assert "robot-1" in out and "/push/imports" in out and "$y$" not in out
    # A second account of the same name, a bad scope, a bad rate: refused,
    # and the file is unchanged.
    for args in (["robot-1", "--scope", "read"], ["x", "--scope", "fly"],
                 ["y", "--scope", "read", "--rate", "fast"]):
        p = run_kaleidod(["account", "--accounts", acc, "add"] + args)
        assert p.returncode == 1, p
        assert p.stderr.decode().startswith("kaleidod: ")
    assert slurp(acc) == text
    p = run_kaleidod(["account", "--accounts", acc, "remove", "robot-1"])
    assert p.returncode == 0
    assert "robot-1" not in slurp(acc)
    p = run_kaleidod(["account", "--accounts", acc, "remove", "robot-1"])
    assert p.returncode == 1 and b"no account 'robot-1'" in p.stderr


def test_hash_secret_makes_a_hash_the_gateway_accepts(tmp_path, mock, daemon_factory):
    p = subprocess.run([KALEIDOD, "--hash-secret"], input=b"correct horse battery\n",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                       timeout=15)
    assert p.returncode == 0, p.stderr
    h = p.stdout.decode().strip()
    assert h.startswith("$y$") and "correct horse" not in h
    acc = tmp_path / "accounts"
    acc.write_text("# a comment line\n\nbob:%s:read:::::Bob\n" % h)
    d = daemon_factory(mock, config={"gateway": {"accounts": str(acc)}}).start()
    assert login(d.port, "bob", "correct horse battery").status == 200
    assert login(d.port, "bob", "correct horse").status == 401


def test_a_bad_accounts_file_stops_the_start_with_its_line(tmp_path, mock, daemon_factory):
    acc = tmp_path / "accounts"
    acc.write_text("ok:$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2"
                   ":read::::\nbroken line\n")
    d = daemon_factory(mock, config={"gateway": {"accounts": str(acc)}})
    d.write_config()
    p = run_kaleidod(["--config", d.config_path, "--check-config"])
    assert p.returncode == 1
    assert "accounts:2:" in p.stderr.decode(), p.stderr


# ---------------------------------------------------------------- authentication

def test_requests_need_a_token_even_for_a_cached_answer(lab):
    d, secrets, _ = lab
    tok = token_of(d, "reader", secrets)
    r = request(d.port, "GET", "/programs", bearer(tok))
    assert r.status == 200 and r.header("X-Cache") == "MISS", r
    assert request(d.port, "GET", "/programs", bearer(tok)).header("X-Cache") == "HIT"
    # The same stored answer, to someone without a valid token: 401 each time.
    for hdrs in ([], bearer("kd_" + "A" * 43), [("Authorization", "Basic YTpi")],
                 bearer(tok[:-1])):
        r = request(d.port, "GET", "/programs", hdrs)
        assert r.status == 401, (hdrs, r)
        assert r.header("WWW-Authenticate", "").startswith("Bearer")
        body = r.json()
        assert body["error"] in ("authentication required", "invalid token")
        assert "/auth/oauth/token" in body["detail"]
        assert "programs" not in r.body.decode().replace("/_kaleidod", "")


def test_wrong_secret_and_unknown_account_get_401(lab):
    d, secrets, _ = lab
    for cid, sec in (("alice", "wrong"), ("nobody", secrets["alice"]), ("alice", "")):
        r = login(d.port, cid, sec)
        assert r.status == 401, r
        assert r.json()["error"] == "invalid_client"
        assert secrets["alice"] not in r.body.decode()
    assert login(d.port, "alice", secrets["alice"], body_type="json").status == 200
    st = admin_stats(d, secrets)["gateway"]["accounts"]["alice"]
    assert st["login_failures"] == 2 and st["logins"] == 1, st


def test_an_expired_token_gets_401(tmp_path, mock, daemon_factory):
    acc = str(tmp_path / "accounts")
    secret = account_add(acc, "shortlived", "--scope", "read")
    # 3 s: the first request must get in before the token ends, also
    # under load (the lifetime counts from the login on the daemon).
    d = daemon_factory(mock, config={"gateway": {"accounts": acc},
                                     "server": {"token_lifetime": "3"}}).start()
    r = login(d.port, "shortlived", secret)
    assert r.json()["expires_in"] == 3
    tok = r.json()["access_token"]
    assert request(d.port, "GET", "/programs", bearer(tok)).status == 200
    wait_for(lambda: request(d.port, "GET", "/programs", bearer(tok)).status == 401,
             timeout=10, what="the token to expire")
    assert request(d.port, "GET", "/programs", bearer(tok)).json()["error"] == "invalid token"


def test_refresh_trades_a_refresh_token_once(lab):
    d, secrets, _ = lab
    first = login(d.port, "reader", secrets["reader"]).json()
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    body = urllib.parse.urlencode({"grant_type": "refresh_token",
                                   "refresh_token": first["refresh_token"]}).encode()
    r = request(d.port, "POST", "/auth/oauth/token", form, body)
    assert r.status == 200, r
    second = r.json()
    assert second["access_token"] != first["access_token"]
    assert request(d.port, "GET", "/programs", bearer(second["access_token"])).status == 200
    # Used up; and an access token is not a refresh token.
    assert request(d.port, "POST", "/auth/oauth/token", form, body).status == 401
    bad = urllib.parse.urlencode({"grant_type": "refresh_token",
                                  "refresh_token": second["access_token"]}).encode()
    assert request(d.port, "POST", "/auth/oauth/token", form, bad).status == 401


def test_x_kal_authorization_is_preferred_and_no_local_token_goes_upstream(lab, mock):
    d, secrets, _ = lab
    tok = token_of(d, "reader", secrets)
    r = request(d.port, "GET", "/entity_slices",
                bearer(tok, "X-Kal-Authorization") + bearer("kd_not_a_token"))
    assert r.status == 200, r
    r = request(d.port, "GET", "/entity_slices",
                bearer("kd_not_a_token", "X-Kal-Authorization") + bearer(tok))
    assert r.status == 401, r
    upstream_tokens = set(mock.tokens()["access"])
    for e in mock.requests("/entity_slices"):
        for k, v in e["headers"]:
            assert tok not in v, (k, v)
            if k.lower() in ("authorization", "x-kal-authorization"):
                assert v.split()[-1] in upstream_tokens, (k, v)


# ---------------------------------------------------------------- authorization

def test_a_read_scope_cannot_write(lab, mock):
    d, secrets, _ = lab
    tok = token_of(d, "reader", secrets)
    before = mock.count("POST /key_fields")
    r = request(d.port, "POST", "/key_fields", bearer(tok) + [("Content-Type",
                                                               "application/json")],
                b'{"field_name": "x"}')
    assert r.status == 403, r
    assert "scope write" in r.json()["detail"] and "reader" in r.json()["detail"]
    assert mock.count("POST /key_fields") == before
    tok = token_of(d, "alice", secrets)
    r = request(d.port, "POST", "/key_fields", bearer(tok) + [("Content-Type",
                                                               "application/json")],
                b'{"field_name": "x"}')
    assert r.status == 200, r
    assert admin_stats(d, secrets)["gateway"]["accounts"]["reader"]["denied"] == 1


def test_a_path_allow_list_narrows_the_scope(tmp_path, mock, daemon_factory):
    acc = str(tmp_path / "accounts")
    secret = account_add(acc, "importer", "--scope", "read,write", "--path", "/push/imports",
                         "--path", "/programs")
    d = daemon_factory(mock, config={"gateway": {"accounts": acc}}).start()
    tok = login(d.port, "importer", secret).json()["access_token"]
    assert request(d.port, "GET", "/programs", bearer(tok)).status == 200
    assert request(d.port, "GET", "/programs?x=1", bearer(tok)).status == 200
    for target in ("/entity_slices", "/programsX", "/push", "/records/r1"):
        r = request(d.port, "GET", target, bearer(tok))
        assert r.status == 403, (target, r)
        assert "its own paths" in r.json()["detail"]


def test_admin_endpoints_need_admin_scope_unless_loopback_is_trusted(lab, mock,
                                                                     daemon_factory,
                                                                     tmp_path):
    d, secrets, acc = lab  # admin_from_loopback = no: every client is "the network"
    assert request(d.port, "GET", "/_kaleidod/health").status == 200  # always open
    assert request(d.port, "GET", "/_kaleidod/stats").status == 401
    r = request(d.port, "GET", "/_kaleidod/stats", bearer(token_of(d, "reader", secrets)))
    assert r.status == 403 and "scope admin" in r.json()["detail"], r
    r = request(d.port, "GET", "/_kaleidod/stats", bearer(token_of(d, "admin", secrets)))
    assert r.status == 200 and "gateway" in r.json(), r
    r = request(d.port, "POST", "/_kaleidod/purge",
                bearer(token_of(d, "alice", secrets)) + [("Content-Type", "application/json")],
                b'{"all": true}')
    assert r.status == 403, r
    # The default: loopback clients reach the admin endpoints without a token.
    d2 = daemon_factory(mock, config={"gateway": {"accounts": acc}}, name="loopback").start()
    assert request(d2.port, "GET", "/_kaleidod/stats").status == 200
    assert request(d2.port, "GET", "/programs").status == 401


def test_an_account_rate_limit_answers_429_with_retry_after(tmp_path, mock, daemon_factory):
    acc = str(tmp_path / "accounts")
    secret = account_add(acc, "slow", "--scope", "read", "--rate", "2/h")
    other = account_add(acc, "free", "--scope", "read")
    d = daemon_factory(mock, config={"gateway": {"accounts": acc}}).start()
    tok = login(d.port, "slow", secret).json()["access_token"]
    assert [request(d.port, "GET", "/programs", bearer(tok)).status for _ in range(2)] == \
        [200, 200]
    r = request(d.port, "GET", "/programs", bearer(tok))
    assert r.status == 429, r
    assert 1000 <= int(r.header("Retry-After")) <= 1800, r
    assert r.json()["error"] == "rate limited"
    # Another account is not limited by it.
    tok2 = login(d.port, "free", other).json()["access_token"]
    assert request(d.port, "GET", "/programs", bearer(tok2)).status == 200
    assert d.stats()["gateway"]["accounts"]["slow"]["rate_limited"] == 1


# ---------------------------------------------------------------- reload

def test_reload_revokes_removed_accounts_and_changed_secrets(lab):
    d, secrets, acc = lab
    alice = token_of(d, "alice", secrets)
    reader = token_of(d, "reader", secrets)
    admin = token_of(d, "admin", secrets)
    for t in (alice, reader, admin):
        assert request(d.port, "GET", "/programs", bearer(t)).status == 200
    assert run_kaleidod(["account", "--accounts", acc, "remove", "alice"]).returncode == 0
    assert run_kaleidod(["account", "--accounts", acc, "remove", "reader"]).returncode == 0
    new_reader = account_add(acc, "reader", "--scope", "read")  # a new secret
    # Until the reload, the running set is in force.
    assert request(d.port, "GET", "/programs", bearer(alice)).status == 200
    reload_and_wait(d)
    assert "2 tokens revoked" in d.log() or "tokens revoked" in d.log()
    assert request(d.port, "GET", "/programs", bearer(alice)).status == 401
    assert request(d.port, "GET", "/programs", bearer(reader)).status == 401
    assert request(d.port, "GET", "/programs", bearer(admin)).status == 200  # untouched
    assert login(d.port, "alice", secrets["alice"]).status == 401
    assert login(d.port, "reader", secrets["reader"]).status == 401
    assert login(d.port, "reader", new_reader).status == 200
    # A broken file on reload keeps the accounts in force.
    with open(acc, "a") as f:
        f.write("garbage\n")
    reload_and_wait(d)
    assert "keeping the accounts in force" in d.log()
    assert request(d.port, "GET", "/programs", bearer(admin)).status == 200


# ---------------------------------------------------------------- the listen address

def test_a_network_address_needs_accounts_or_allow_anonymous(tmp_path, mock, daemon_factory):
    d = daemon_factory(mock, bind_addr="0.0.0.0", name="anon")
    d.start(wait_ready=False)
    assert d.wait_exit() == 1
    assert "not a loopback address" in d.log() and "[gateway] accounts" in d.log()
    # On purpose: allowed, with a warning at every start.
    d2 = daemon_factory(mock, bind_addr="0.0.0.0", name="anon2",
                        config={"gateway": {"allow_anonymous": "yes"}}).start()
    assert "allow_anonymous" in d2.log()
    assert Sdk(d2.port).get("/programs").status == 200
    # With accounts: served, and guarded.
    acc = str(tmp_path / "accounts")
    secret = account_add(acc, "lab", "--scope", "read")
    d3 = daemon_factory(mock, bind_addr="0.0.0.0", name="lab",
                        config={"gateway": {"accounts": acc}}).start()
    assert request(d3.port, "GET", "/programs").status == 401
    assert Sdk(d3.port, client_id="lab", secret=secret).get("/programs").status == 200


# ---------------------------------------------------------------- audit trail

def audit_lines(d):
    with open(d.audit_path) as f:
        return [json.loads(line) for line in f]


def test_audit_line_per_request_with_its_fields(lab, mock):
    d, secrets, _ = lab
    tok = token_of(d, "alice", secrets)
    r1 = request(d.port, "GET", "/programs?page=2", bearer(tok))
    r2 = request(d.port, "GET", "/programs?page=2", bearer(tok))
    r3 = request(d.port, "POST", "/key_fields",
                 bearer(tok) + [("Content-Type", "application/json")], b'{"field_name": "y"}')
    r4 = request(d.port, "GET", "/programs")
    # A credential in a URL: masked in the trail, and not stored (BYPASS).
    r5 = request(d.port, "GET", "/programs?api_key=s3cr3t&page=2", bearer(tok))
    assert [r.status for r in (r1, r2, r3, r4, r5)] == [200, 200, 200, 401, 200]
    ids = [r.header("X-Request-Id") for r in (r1, r2, r3, r4, r5)]
    assert all(ids) and len(set(ids)) == 5, ids
    wait_for(lambda: len(audit_lines(d)) >= 6, timeout=10, what="the audit lines")
    lines = {e["id"]: e for e in audit_lines(d)}
    login_line = [e for e in lines.values() if e["path"] == "/auth/oauth/token"][0]
    assert login_line["account"] == "alice" and login_line["status"] == 200
    a, b, c, u, k = (lines[i] for i in ids)
    assert set(a) == {"time", "id", "account", "ip", "method", "path", "status", "cache",
                      "upstream_ms", "bytes_in", "bytes_out"}
    assert a["account"] == "alice" and a["ip"] == "127.0.0.1" and a["method"] == "GET"
    assert a["path"] == "/programs?page=2"
    assert (k["path"], k["cache"]) == ("/programs?api_key=***&page=2", "BYPASS")
    assert (a["status"], a["cache"], b["cache"]) == (200, "MISS", "HIT")
    assert a["upstream_ms"] is not None and a["upstream_ms"] >= 0
    assert b["upstream_ms"] is None
    assert a["bytes_out"] == len(r1.body) and b["bytes_out"] == len(r2.body)
    assert (c["method"], c["bytes_in"], c["cache"]) == ("POST", len(b'{"field_name": "y"}'),
                                                        None)
    assert (u["account"], u["status"]) == (None, 401)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", a["time"])
    # The API saw the same id for the request kaleidod forwarded.
    seen = [v for e in mock.requests("/key_fields") for k, v in e["headers"]
            if k.lower() == "x-request-id"]
    assert ids[2] in seen, seen


def test_audit_file_is_reopened_on_sighup(lab):
    d, secrets, _ = lab
    tok = token_of(d, "reader", secrets)
    assert request(d.port, "GET", "/programs", bearer(tok)).status == 200
    os.rename(d.audit_path, d.audit_path + ".1")
    reload_and_wait(d)
    r = request(d.port, "GET", "/entity_slices", bearer(tok))
    wait_for(lambda: os.path.exists(d.audit_path) and len(audit_lines(d)) >= 1, timeout=10,
             what="the new audit file")
    assert [e["id"] for e in audit_lines(d)] == [r.header("X-Request-Id")]
    rotated = slurp(d.audit_path + ".1")
    assert "/programs" in rotated and "/entity_slices" not in rotated


def test_no_secret_or_token_reaches_a_log_the_audit_the_cache_or_an_error(lab, mock):
    d, secrets, _ = lab
    answers = [login(d.port, n, s).json() for n, s in secrets.items()]
    bodies = []
    for a in answers:
        for target in ("/programs", "/entity_slices?token=" + a["access_token"],
                       "/_kaleidod/stats", "/no/such/path"):
            bodies.append(request(d.port, "GET", target,
                                  bearer(a["access_token"])).body.decode())
    bodies.append(request(d.port, "GET", "/programs", bearer("kd_guess" + "x" * 38)).body
                  .decode())
    bodies.append(login(d.port, "alice", "not-" + secrets["alice"]).body.decode())
    d.stop()
    local = list(secrets.values()) + ["not-" + secrets["alice"]]
    local += [a["access_token"] for a in answers] + [a["refresh_token"] for a in answers]
    # The workspace's own: never anywhere either (the mock echoes what it
    # receives for an unknown path, so its bodies are not kaleidod's).
    wanted = local + [CLIENT_SECRET] + mock.tokens()["access"] + mock.tokens()["refresh"]
    files = {"log": slurp(d.log_path, "rb"), "audit": slurp(d.audit_path, "rb"),
             "cache": slurp(d.cache_file, "rb")}
    if os.path.exists(d.cache_file + "-wal"):
        files["cache-wal"] = slurp(d.cache_file + "-wal", "rb")
    assert len(files["audit"]) > 0 and b"token=***" in files["audit"]
    for secret in wanted:
        for name, blob in files.items():
            assert secret.encode() not in blob, (name, secret[:6])
    for secret in local:
        for body in bodies:
            assert secret not in body, secret[:6]


def test_many_logins_at_once_all_get_their_own_token(lab):
    """Logins queue for the two login threads; each client gets a token of
    its own account, and the tokens work."""
    import threading
    d, secrets, _ = lab
    names = ["alice", "reader", "admin"] * 10
    out = [None] * len(names)

    def one(i):
        out[i] = login(d.port, names[i], secrets[names[i]])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status for r in out] == [200] * len(names), out
    tokens = [r.json()["access_token"] for r in out]
    assert len(set(tokens)) == len(tokens)
    r = request(d.port, "POST", "/key_fields", bearer(tokens[1]) +
                [("Content-Type", "application/json")], b'{"field_name": "z"}')
    assert r.status == 403  # tokens[1] is reader's
    st = admin_stats(d, secrets)["gateway"]["accounts"]
    assert [st[n]["logins"] for n in ("alice", "reader")] == [10, 10], st


def test_guessing_from_one_address_is_refused_unhashed(lab):
    """After a burst of wrong secrets an address is refused at once, without
    a hash (login_failures stops growing), with Retry-After; another address
    logs in meanwhile; the log sums it up (at most once a minute)."""
    d, secrets, _ = lab
    # 20 guesses: the 10 the bucket holds, hashed, then 10 refused.  All
    # within the 6 s after which the bucket has room for one more (so no
    # more than needed: each hash is slow under the sanitizers).
    statuses = [login(d.port, "alice", "guess-%d" % i, source="127.0.0.3").status
                for i in range(20)]
    assert statuses[:10] == [401] * 10, statuses
    assert set(statuses[10:]) == {429}, statuses
    r = login(d.port, "alice", secrets["alice"], source="127.0.0.3")
    assert r.status == 429 and r.json()["error"] == "too many failed logins", r
    assert 1 <= int(r.header("Retry-After")) <= 6, r
    assert secrets["alice"] not in r.body.decode()
    # Only the burst was hashed; another address is not held up.
    ok = login(d.port, "alice", secrets["alice"], source="127.0.0.4")
    assert ok.status == 200, ok
    st = admin_stats(d, secrets)["gateway"]["accounts"]["alice"]
    assert st["login_failures"] == 10 and st["logins"] == 1, st


# ---------------------------------------------------------------- limits

def keepalive(port, source):
    """A keep-alive connection from source that has made one request."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    c.request("GET", "/_kaleidod/health", headers={"Host": "127.0.0.1:%d" % port})
    r = c.getresponse()
    r.read()
    return c, r.status


def test_connections_per_address_are_capped(mock, daemon_factory):
    d = daemon_factory(mock, config={"server": {"max_connections_per_ip": "3"}}).start()
    held = [keepalive(d.port, "127.0.0.5") for _ in range(3)]
    assert [st for _, st in held] == [200] * 3
    extra, st = keepalive(d.port, "127.0.0.5")
    extra.close()
    assert st == 429
    r = request(d.port, "GET", "/programs", source="127.0.0.5")
    assert r.status == 429 and r.json()["error"] == "too many connections", r
    assert "max_connections_per_ip" in r.json()["detail"]
    assert r.header("Retry-After") == "1"
    # Another address is not affected; a closed connection frees a place.
    assert request(d.port, "GET", "/programs", source="127.0.0.6").status == 200
    held[0][0].close()
    wait_for(lambda: request(d.port, "GET", "/_kaleidod/health", source="127.0.0.5").status
             == 200, timeout=10, what="the closed connection to be counted out")
    for c, _ in held[1:]:
        c.close()


def test_oversized_header_fields_get_431_in_json(daemon):
    r = request(daemon.port, "GET", "/programs", [("X-Big", "b" * (20 * 1024))])
    assert r.status == 431, r
    assert r.json()["error"] == "request header fields too large"
    # Just under the limit is fine.
    r = request(daemon.port, "GET", "/_kaleidod/health", [("X-Big", "b" * (12 * 1024))])
    assert r.status == 200, r


def test_a_declared_body_over_the_scope_s_limit_gets_413(tmp_path, mock, daemon_factory):
    acc = str(tmp_path / "accounts")
    secret = account_add(acc, "writer", "--scope", "read,write")
    rsecret = account_add(acc, "reader", "--scope", "read")
    d = daemon_factory(mock, config={"gateway": {"accounts": acc, "max_body": "1K",
                                                 "max_body_read": "100"}}).start()
    tok = login(d.port, "writer", secret).json()["access_token"]
    hdrs = bearer(tok) + [("Content-Type", "application/json")]
    big = b'{"field_name": "' + b"x" * 2000 + b'"}'
    r = request(d.port, "POST", "/key_fields", hdrs, big)
    assert r.status == 413 and "max_body" in r.json()["detail"], r
    assert mock.count("POST /key_fields") == 0
    assert request(d.port, "POST", "/key_fields", hdrs, b'{"field_name": "x"}').status == 200
    # A reader's GET with a body: the reader's limit, far smaller.
    rtok = login(d.port, "reader", rsecret).json()["access_token"]
    rh = bearer(rtok) + [("Content-Type", "application/json")]
    r = request(d.port, "GET", "/records/search", rh, b"q" * 500)
    assert r.status == 413 and "max_body_read" in r.json()["detail"], r
    assert request(d.port, "GET", "/records/search", rh, b"q" * 50).status == 200
    assert mock.count("GET /records/search") == 1


def network_address():
    """A non-loopback IPv4 address of this machine, or None."""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
        addr = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") else addr


def test_admin_endpoints_from_the_network_need_the_admin_scope(tmp_path, mock, daemon_factory):
    """A client on a real network address, with the default
    admin_from_loopback = yes: the admin endpoints want an admin token from
    it, while the loopback operator gets in without one."""
    addr = network_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    acc = str(tmp_path / "accounts")
    admin = account_add(acc, "ops", "--scope", "read,admin")
    reader = account_add(acc, "viewer", "--scope", "read")
    d = daemon_factory(mock, bind_addr="0.0.0.0",
                       config={"gateway": {"accounts": acc},
                               "server": {"server_names": addr}}).start()

    def stats(token=None):
        hdrs = bearer(token) if token else []
        return request(d.port, "GET", "/_kaleidod/stats", hdrs, host=addr, source=addr)

    def tok(name, secret):
        r = login(d.port, name, secret, source=addr)
        assert r.status == 200, r
        return r.json()["access_token"]

    r = stats()
    assert r.status == 401, r
    assert stats(tok("viewer", reader)).status == 403
    r = stats(tok("ops", admin))
    assert r.status == 200 and "gateway" in r.json(), r
    assert request(d.port, "GET", "/_kaleidod/stats").status == 200  # loopback
    assert request(d.port, "GET", "/_kaleidod/health", host=addr, source=addr).status == 200


# ---------------------------------------------------------------- the audit trail in the journal

CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE = 0x00020000, 4096, 16384, 1 << 18


def private_journal(sock_path):
    """A preexec_fn: the daemon gets a mount namespace of its own in which
    /run/systemd/journal/socket is the test's socket, so what it sends the
    journal arrives here, and the machine's journal (if any) sees nothing."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def pre():
        if (libc.unshare(CLONE_NEWNS) != 0 or
                libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0 or
                libc.mount(b"tmpfs", b"/run/systemd", b"tmpfs", 0, None) != 0):
            os._exit(97)
        os.mkdir("/run/systemd/journal")
        open("/run/systemd/journal/socket", "w").close()
        if libc.mount(sock_path.encode(), b"/run/systemd/journal/socket", None, MS_BIND,
                      None) != 0:
            os._exit(98)
    return pre


def journal_fields(datagram):
    """The journal's native protocol: NAME=value lines, or NAME, a 64-bit
    little-endian length and the bytes, for values with a newline."""
    import struct
    out, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k = line
            n = struct.unpack("<Q", datagram[nl + 1:nl + 9])[0]
            v = datagram[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        out[k.decode()] = v.decode("utf-8", "replace")
    return out


def test_audit_to_the_journal_has_the_same_fields(tmp_path, mock, daemon_factory):
    import socket
    import subprocess as sp
    if os.geteuid() != 0 or not os.path.isdir("/run/systemd") or \
            sp.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root, /run/systemd and mount namespaces")
    # Not in tmp_path: a socket's path must fit in 107 bytes, and a
    # distcheck build tree is deeper than that.
    sock_dir = tempfile.mkdtemp(prefix="kdj-", dir="/tmp")
    sock_path = os.path.join(sock_dir, "journal.sock")
    jsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    jsock.bind(sock_path)
    jsock.settimeout(10)
    try:
        acc = str(tmp_path / "accounts")
        secret = account_add(acc, "alice", "--scope", "read")
        d = daemon_factory(mock, preexec_fn=private_journal(sock_path),
                           config={"gateway": {"accounts": acc}, "log": {"audit": "journal"}}).start()
        tok = login(d.port, "alice", secret).json()["access_token"]
        r = request(d.port, "GET", "/programs?token=" + tok, bearer(tok))
        assert r.status == 200, r
        rid = r.header("X-Request-Id")
        got = []
        while not any(f.get("KALEIDOD_REQUEST_ID") == rid for f in got):
            got.append(journal_fields(jsock.recv(65536)))
    finally:
        jsock.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    f = [f for f in got if f.get("KALEIDOD_REQUEST_ID") == rid][0]
    assert f["SYSLOG_IDENTIFIER"] == "kaleidod-audit" and f["PRIORITY"] == "6"
    assert (f["KALEIDOD_ACCOUNT"], f["KALEIDOD_METHOD"], f["KALEIDOD_STATUS"],
            f["KALEIDOD_CACHE"]) == ("alice", "GET", "200", "BYPASS")
    assert f["KALEIDOD_PATH"] == "/programs?token=***"
    assert f["KALEIDOD_CLIENT_IP"] == "127.0.0.1" and int(f["KALEIDOD_BYTES_OUT"]) == len(r.body)
    for fields in got:
        for v in fields.values():
            assert tok not in v and secret not in v
