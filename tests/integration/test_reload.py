"""SIGHUP: a corrected client secret is taken without a restart."""
import os
import signal

from harness import CLIENT_SECRET, Sdk, wait_for


def auth_state(d):
    return d.health()["upstream"]["auth"]["state"]


def test_sighup_takes_a_fixed_secret_without_restart(mock, daemon_factory, tmp_path):
    # The secret lives in a file; the backoff is long, so only the reload
    # can bring the daemon back within the test's bounds.
    secret_file = tmp_path / "client_secret"
    secret_file.write_text("wrong-secret\n")
    os.chmod(secret_file, 0o600)
    d = daemon_factory(mock, secret=None,
                       config={"upstream": {"client_secret_file": str(secret_file),
                                            "auth_retry_min": "60", "auth_retry_max": "600"}})
    d.start()
    s = Sdk(d.port)
    assert s.get("/programs").status == 502  # cannot authenticate, nothing cached
    wait_for(lambda: auth_state(d) == "failing", timeout=10, what="auth failing")
    rejected = mock.stats()["token"]["rejected"]
    pid_before = d.proc.pid

    secret_file.write_text(CLIENT_SECRET + "\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: auth_state(d) == "ok", timeout=10, what="auth ok after SIGHUP")
    assert d.proc.pid == pid_before and d.proc.poll() is None
    assert mock.stats()["token"]["rejected"] == rejected  # one new try, and it worked
    r = s.get("/programs")
    assert r.status == 200 and r.header("X-Cache") == "MISS", r
    log = open(d.log_path, encoding="utf-8", errors="replace").read()
    assert "SIGHUP: new client secret" in log
    assert CLIENT_SECRET not in log and "wrong-secret" not in log


def test_sighup_with_a_broken_config_keeps_running(mock, daemon_factory):
    d = daemon_factory(mock).start()
    assert Sdk(d.port).get("/programs").status == 200
    with open(d.config_path, "a") as f:
        f.write("\n[server]\nno_such_key = 1\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: "keeping the running one" in open(d.log_path).read(), timeout=10,
             what="the reload refusal in the log")
    assert d.proc.poll() is None
    r = Sdk(d.port).get("/programs")
    assert r.status == 200 and r.header("X-Cache") == "HIT", r
