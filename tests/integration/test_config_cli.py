"""kaleidod's command line and configuration: --check-config prints the
effective settings with the secret masked, a bad file is refused with
FILE:LINE and the key, --version and --help work, and a listen address
off the loopback is refused."""

import re

import pytest

from harness import CLIENT_ID, CLIENT_SECRET, Sdk, run_kaleidod

SECRET = "s3cr3t-in-file-7d41e0"


def write(tmp_path, text, name="k.conf"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


GOOD = """[upstream]
url = http://127.0.0.1:9
client_id = lab-client
client_secret = %s
timeout = 7

[server]
max_connections = 64

[cache]
file = %s

[family.programs]
ttl = 42
"""


def test_check_config_prints_settings_with_secret_masked(tmp_path):
    path = write(tmp_path, GOOD % (SECRET, tmp_path / "c.db"))
    p = run_kaleidod(["--config", path, "--check-config"])
    assert p.returncode == 0, p
    out = p.stdout.decode()
    assert "http://127.0.0.1:9" in out and "lab-client" in out, out
    assert re.search(r"timeout\s*=\s*7\b", out), out
    assert re.search(r"ttl\s*=\s*42\b", out), out
    assert SECRET not in out + p.stderr.decode(), "secret printed"
    assert "client_secret" in out, "secret line missing entirely (should be masked): " + out


def test_command_line_overrides_the_file(tmp_path):
    path = write(tmp_path, GOOD % (SECRET, tmp_path / "c.db"))
    other = str(tmp_path / "other.db")
    p = run_kaleidod(["--config", path, "--cache", other, "--log-level", "warn",
                      "--check-config"])
    assert p.returncode == 0, p
    out = p.stdout.decode()
    assert other in out and str(tmp_path / "c.db") not in out, out
    assert re.search(r"level\s*=\s*warn\b", out), out


def test_check_config_masks_a_secret_from_the_environment(tmp_path):
    path = write(tmp_path, "[upstream]\nurl = http://127.0.0.1:9\nclient_id = x\n"
                 "[cache]\nfile = %s\n" % (tmp_path / "c.db"))
    p = run_kaleidod(["--config", path, "--check-config"],
                     env={"KALEIDOSCOPE_API_CLIENT_SECRET": SECRET,
                          "KALEIDOSCOPE_API_URL": "http://127.0.0.1:19"})
    assert p.returncode == 0, p
    out = p.stdout.decode()
    assert SECRET not in out + p.stderr.decode()
    assert "http://127.0.0.1:19" in out, "environment did not override the file: " + out


@pytest.mark.parametrize("body,line,words", [
    ("[upstream]\nurl = http://127.0.0.1:9\nbogus_key = 1\n", 3, ["upstream", "bogus_key"]),
    ("[upstream]\nurl = http://127.0.0.1:9\n\n[server]\nmax_connections = many\n", 5,
     ["server", "max_connections"]),
    ("[upstream]\nurl = http://127.0.0.1:9\n[nonsense]\nx = 1\n", 3, ["nonsense"]),
    ("[family.programs]\nttl = -5\n", 2, ["ttl"]),
], ids=["unknown-key", "bad-number", "unknown-section", "negative-ttl"])
def test_bad_config_exits_1_naming_file_line_and_key(tmp_path, body, line, words):
    path = write(tmp_path, body)
    for args in (["--config", path, "--check-config"], ["--config", path]):
        p = run_kaleidod(args, env={"KALEIDOSCOPE_API_CLIENT_SECRET": "x"})
        err = p.stderr.decode()
        assert p.returncode == 1, (args, p)
        assert "%s:%d:" % (path, line) in err, err
        for w in words:
            assert w in err, (w, err)


def test_version(tmp_path):
    p = run_kaleidod(["--version"])
    assert p.returncode == 0, p
    out = p.stdout.decode()
    assert re.search(r"kaleidod\D*\d+\.\d+", out), out
    # The libraries it runs with, each with a version number.
    for lib in ("libmicrohttpd", "libcurl", "SQLite", "cJSON", "zlib", "GnuTLS"):
        assert re.search(r"^%s \d+\.\d+" % lib, out, re.M), (lib, out)


def test_help(tmp_path):
    p = run_kaleidod(["--help"])
    assert p.returncode == 0, p
    out = p.stdout.decode()
    for opt in ("--config", "--listen", "--cache", "--log-level", "--check-config", "--version"):
        assert opt in out, (opt, out)


@pytest.mark.parametrize("addr", ["0.0.0.0:0", "[::]:0", "192.0.2.10:8080"])
def test_listen_off_loopback_refused(tmp_path, addr):
    path = write(tmp_path, "[upstream]\nurl = http://127.0.0.1:9\nclient_id = x\n"
                 "[cache]\nfile = %s\n" % (tmp_path / "c.db"))
    p = run_kaleidod(["--config", path, "--listen", addr],
                     env={"KALEIDOSCOPE_API_CLIENT_SECRET": "x"}, timeout=10)
    assert p.returncode == 1, p
    assert "loopback" in p.stderr.decode().lower() or "listen" in p.stderr.decode(), p.stderr


@pytest.mark.parametrize("addr", ["0.0.0.0:8765", "[::]:8765"])
def test_check_config_refuses_listen_off_loopback(tmp_path, addr):
    # --check-config validates what a start would refuse, without binding.
    p = run_kaleidod(["--listen", addr, "--check-config"],
                     env={"KALEIDOSCOPE_API_CLIENT_SECRET": "x"}, timeout=10)
    assert p.returncode == 1, p
    assert "loopback" in p.stderr.decode(), p.stderr
    assert p.stdout == b"", p.stdout


@pytest.mark.parametrize("addr", ["127.0.0.1:0", "[::1]:0"])
def test_listen_on_loopback_accepted(tmp_path, addr):
    path = write(tmp_path, "[upstream]\nurl = http://127.0.0.1:9\nclient_id = x\n"
                 "[cache]\nfile = %s\n" % (tmp_path / "c.db"))
    p = run_kaleidod(["--config", path, "--listen", addr, "--check-config"],
                     env={"KALEIDOSCOPE_API_CLIENT_SECRET": "x"})
    assert p.returncode == 0, p


def test_unknown_option_fails(tmp_path):
    p = run_kaleidod(["--no-such-option"])
    assert p.returncode != 0
    assert p.stderr, p


def test_socket_activated_listener_off_loopback_refused(daemon_factory, mock):
    # The one test that binds off 127.0.0.1: a wildcard socket, handed over
    # as systemd would with a bare ListenStream=PORT; nothing ever accepts on
    # it and it closes when kaleidod refuses it.
    d = daemon_factory(mock, bind_addr="0.0.0.0").start(wait_ready=False)
    assert d.wait_exit() == 1, d.log_tail()
    assert "loopback" in d.log().lower(), d.log_tail()


def test_secret_read_from_client_secret_file(daemon_factory, mock, tmp_path):
    f = tmp_path / "secret"
    f.write_text(CLIENT_SECRET + "\n")
    f.chmod(0o600)
    d = daemon_factory(mock, secret=None,
                       config={"upstream": {"client_secret_file": str(f)}}).start()
    r = Sdk(d.port).get("/activities")
    assert r.status == 200, r
    assert mock.stats()["token"]["client_credentials"] == 1
    p = run_kaleidod(["--config", d.config_path, "--check-config"])
    assert p.returncode == 0 and CLIENT_SECRET not in p.stdout.decode(), p


def test_environment_names_upstream_and_client(daemon_factory, mock):
    d = daemon_factory("http://127.0.0.1:9", config={"upstream": {"url": None,
                                                                "client_id": None}},
                       env={"KALEIDOSCOPE_API_URL": mock.url,
                            "KALEIDOSCOPE_API_CLIENT_ID": CLIENT_ID}).start()
    assert Sdk(d.port).get("/workspaces/active").status == 200
    assert d.health()["upstream"]["url"] == mock.url


def test_startup_log_names_the_socket_actually_served(daemon):
    # Under socket activation the address comes from the socket, not from
    # [server] listen; the log must not send an operator to the wrong port.
    assert "127.0.0.1:%d" % daemon.port in daemon.log(), daemon.log_tail()


def test_the_packaged_conffile_names_every_setting():
    """debian/kaleidod.conf (installed as /etc/kaleidod/kaleidod.conf) shows
    every key of every main section, commented out, under its section, so
    an administrator finds each one there (tests/package/run checks that it
    changes nothing)."""
    import os
    from harness import SRCDIR
    p = run_kaleidod(["--check-config"])
    assert p.returncode == 0, p.stderr
    want, section = [], None
    for line in p.stdout.decode().splitlines():
        m = re.match(r"^;? ?\[([a-z0-9_.]+)\]$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^;? ?([a-z_]+) = ", line)
        if m and section is not None and not section.startswith("family."):
            want.append((section, m.group(1)))
    assert len(want) > 30, want
    with open(os.path.join(SRCDIR, "debian", "kaleidod.conf")) as f:
        shipped, section = set(), None
        for line in f:
            line = line.rstrip("\n")
            assert line == "" or line.startswith(";"), "not commented out: %r" % line
            m = re.match(r"^;\[([a-z_.]+)\]$", line)
            if m:
                section = m.group(1)
                continue
            m = re.match(r"^;([a-z_]+) =", line)
            if m:
                shipped.add((section, m.group(1)))
    # client_secret has no place in a file that every admin reads.
    missing = [k for k in want if k not in shipped and k != ("upstream", "client_secret")]
    assert not missing, missing
