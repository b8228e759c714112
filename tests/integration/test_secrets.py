"""No secret leaves kaleidod: after a busy session at debug level (grants,
refreshes, a 401 replay, cache fills, writes, errors), neither the client
secret nor any upstream token appears in the daemon's log, in any answer it
gave, in its cache file, or on its command line."""

import glob
import os

from harness import CLIENT_SECRET, Sdk, request, wait_for


def test_secret_and_upstream_tokens_never_leak(mock_factory, daemon_factory):
    m = mock_factory("--expires-in", "4")
    # The mock echoes request headers; the upstream token in them would be
    # the mock's leak, not kaleidod's.
    m.config(echo_headers=False)
    d = daemon_factory(m, config={"log": {"level": "debug"}}).start()
    with open("/proc/%d/cmdline" % d.pid, "rb") as f:
        cmdline = f.read()
    answers = []

    def keep(r):
        answers.append(b"".join(b"%s: %s\n" % (k.encode(), v.encode()) for k, v in r.headers))
        answers.append(r.body)
        return r

    s = Sdk(d.port)
    keep(request(d.port, "POST", "/auth/oauth/token",
                 [("Content-Type", "application/x-www-form-urlencoded")],
                 ("grant_type=client_credentials&client_id=demo-client&client_secret=%s"
                  % CLIENT_SECRET).encode()))
    for p in ("/programs", "/entity_slices", "/record_views?a=1", "/programs",
              "/activities", "/workspaces/active"):
        keep(s.get(p))
    keep(s.put("/record_views/v1/add_key_field", {"key_field_name": "k"}))
    keep(s.post("/push/imports", {"data": [], "key_field_names": ["k"]}))
    # 401 -> re-auth -> replay
    m.revoke()
    keep(s.get("/activities/after-revoke"))
    # refresh ahead of expiry
    wait_for(lambda: keep(s.get("/activities/tick")) and
             m.stats()["token"]["refresh_token"] >= 1, timeout=15, interval=0.1,
             what="a refresh_token grant")
    # errors: upstream 5xx, reset, and a credentials failure
    m.fault("/activities/err", "status", status=500)
    keep(s.get("/activities/err"))
    m.fault("/activities/reset", "reset")
    keep(s.get("/activities/reset"))
    m.config(client_secret="rotated")
    m.revoke(refresh=True)
    keep(s.get("/activities/after-rotate"))
    wait_for(lambda: d.health()["upstream"]["auth"]["state"] == "failing", timeout=15,
             what="auth failing after rotation")
    for p in ("/_kaleidod/health", "/_kaleidod/stats"):
        keep(d.get(p))
    keep(s.get("/activities/while-failing"))
    d.stop()

    issued = m.tokens()
    assert issued["access"], "the mock issued no token: the session did not run"
    log = open(d.log_path, "rb").read()
    assert log.strip(), "empty daemon log at debug level"
    cache = b""
    for path in glob.glob(d.cache_file + "*"):
        with open(path, "rb") as f:
            cache += f.read()
    assert cache, "no cache file at %s" % d.cache_file
    body = b"\n".join(answers)

    def leaks(secret):
        s = secret.encode()
        return [where for where, blob in (("log", log), ("answers", body), ("cache", cache),
                                         ("cmdline", cmdline)) if s in blob]

    assert not leaks(CLIENT_SECRET), "client secret found in %s" % leaks(CLIENT_SECRET)
    for tok in issued["access"]:
        assert not leaks(tok), "upstream access token %s... found in %s" % (tok[:12], leaks(tok))
    for tok in issued["refresh"]:
        assert not leaks(tok), "upstream refresh token %s... found in %s" % (tok[:12],
                                                                             leaks(tok))
    local = [w for w in leaks(s.access_token) if w != "answers"]
    assert not local, "local token found in %s" % local
    assert os.path.getsize(d.cache_file) > 0


def test_debug_log_shows_upstream_exchanges_with_credentials_redacted(mock, daemon_factory):
    # The secrets test above proves little if debug logging says nothing:
    # at debug level the upstream exchanges are logged (libcurl's debug
    # callback, per STYLE.md), headers included, with bearer tokens and the
    # token request's form redacted at the logging boundary.
    d = daemon_factory(mock, config={"log": {"level": "debug"}}).start()
    r = Sdk(d.port).get("/activities/debug-probe?x=1")
    assert r.status == 200, r
    d.stop()
    log = open(d.log_path, encoding="utf-8", errors="replace").read()
    assert "/activities/debug-probe" in log, "forwarded request not in the debug log"
    assert "/auth/oauth/token" in log, "token request not in the debug log"
    assert any("authorization" in line.lower() for line in log.splitlines()), \
        "request headers not in the debug log"
    for tok in mock.tokens()["access"]:
        assert tok not in log
    assert CLIENT_SECRET not in log
