"""TLS on the listener: a CA and certificates made at test time with
certtool (gnutls-bin), clients through Python's ssl module and curl;
TLS 1.2 at least, plain HTTP on the TLS port, a certificate reloaded on
SIGHUP without dropping connections, and client certificates."""
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess

import pytest

from harness import run_kaleidod, wait_for

CERTTOOL = shutil.which("certtool")
CURL = shutil.which("curl")
GNUTLS_CLI = shutil.which("gnutls-cli")
pytestmark = pytest.mark.skipif(CERTTOOL is None, reason="certtool (gnutls-bin) is not installed")


def slurp(path, mode="r", **kw):
    """A file's whole content, the file closed."""
    with open(path, mode, **kw) as f:
        return f.read()


def certtool(*args):
    subprocess.run([CERTTOOL] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


class Pki:
    """A CA, and certificates it signs, in a directory."""

    def __init__(self, d, name="kaleidod test CA"):
        self.d = str(d)
        os.makedirs(self.d, exist_ok=True)
        self.ca_key, self.ca = self.path("ca.key"), self.path("ca.pem")
        self.template("ca", 'cn = "%s"\nca\ncert_signing_key\nexpiration_days = 2\n' % name)
        self.key(self.ca_key)
        certtool("--generate-self-signed", "--load-privkey", self.ca_key,
                 "--template", self.path("ca.tmpl"), "--outfile", self.ca)

    def path(self, name):
        return os.path.join(self.d, name)

    def template(self, name, text):
        with open(self.path(name + ".tmpl"), "w") as f:
            f.write(text)

    @staticmethod
    def key(path):
        certtool("--generate-privkey", "--key-type=ecdsa", "--curve=secp256r1",
                 "--outfile", path)

    def issue(self, name, client=False, serial=1):
        """(cert, key) for a server (localhost, 127.0.0.1) or a client."""
        key, cert = self.path(name + ".key"), self.path(name + ".pem")
        usage = "tls_www_client" if client else \
            'dns_name = "localhost"\nip_address = "127.0.0.1"\ntls_www_server'
        self.template(name, 'cn = "%s"\nserial = %d\n%s\nsigning_key\nexpiration_days = 2\n'
                      % (name, serial, usage))
        self.key(key)
        certtool("--generate-certificate", "--load-privkey", key, "--load-ca-certificate",
                 self.ca, "--load-ca-privkey", self.ca_key, "--template",
                 self.path(name + ".tmpl"), "--outfile", cert)
        return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_daemon(daemon_factory, mock, pki, tmp_path, name="kaleidod", **server):
    cert, key = pki.issue("server-" + name)
    # Files of the daemon's own, so a test can replace them.
    own_cert, own_key = str(tmp_path / (name + ".pem")), str(tmp_path / (name + ".key"))
    shutil.copy(cert, own_cert)
    shutil.copy(key, own_key)
    conf = {"tls_cert": own_cert, "tls_key": own_key}
    conf.update(server)
    d = daemon_factory(mock, name=name, config={"server": conf})
    return d.start()


def context(pki, client=None):
    ctx = ssl.create_default_context(cafile=pki.ca)
    if client:
        ctx.load_cert_chain(*client)
    return ctx


def get(d, pki, path="/_kaleidod/health", client=None, conn=None):
    c = conn or http.client.HTTPSConnection("localhost", d.port, timeout=10,
                                            context=context(pki, client))
    c.request("GET", path, headers={"Host": "localhost:%d" % d.port})
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, dict(r.getheaders()), body


def test_https_answers_with_the_configured_certificate(daemon_factory, mock, pki, tmp_path):
    d = tls_daemon(daemon_factory, mock, pki, tmp_path)
    status, _, _ = get(d, pki, "/programs")
    assert status == 200
    # The API is told the client came over TLS.
    seen = [v for e in mock.requests("/programs") for k, v in e["headers"]
            if k.lower() == "x-forwarded-proto"]
    assert seen and set(seen) == {"https"}, seen
    if CURL:
        p = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}",
                            "--cacert", pki.ca, "https://localhost:%d/programs" % d.port],
                           capture_output=True, timeout=30)
        assert p.stdout.decode() == "200 0", p


def handshake(d, pki, versions):
    """gnutls-cli's handshake with only those protocol versions: its status."""
    p = subprocess.run([GNUTLS_CLI, "--x509cafile", pki.ca, "-p", str(d.port),
                        "--priority", "NORMAL:-VERS-ALL:" + versions, "localhost"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return p.returncode


def test_tls_below_1_2_and_plain_http_are_refused(daemon_factory, mock, pki, tmp_path):
    d = tls_daemon(daemon_factory, mock, pki, tmp_path)
    if GNUTLS_CLI:
        assert handshake(d, pki, "+VERS-TLS1.2") == 0  # the client can, when allowed
        assert handshake(d, pki, "+VERS-TLS1.1:+VERS-TLS1.0") != 0
    # Plain HTTP on the TLS port: the connection is closed, at once and
    # without an answer that could be mistaken for the API's.
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    s.sendall(b"GET /programs HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    assert b"HTTP/1.1 200" not in data and b"programs" not in data, data
    # And the daemon serves TLS on.
    assert get(d, pki)[0] == 200


def peer_cert(d, pki):
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with context(pki).wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)


def test_sighup_reloads_the_certificate_without_dropping_connections(daemon_factory, mock, pki,
                                                                       tmp_path):
    d = tls_daemon(daemon_factory, mock, pki, tmp_path)
    first = peer_cert(d, pki)
    kept = http.client.HTTPSConnection("localhost", d.port, timeout=10, context=context(pki))
    assert get(d, pki, conn=kept)[0] == 200
    cert, key = pki.issue("renewed", serial=77)
    shutil.copy(cert, str(tmp_path / "kaleidod.pem"))
    shutil.copy(key, str(tmp_path / "kaleidod.key"))
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: "TLS certificate and key read again" in d.log(), timeout=10,
             what="the reload")
    second = peer_cert(d, pki)
    assert second != first
    with open(cert) as f:
        assert second == ssl.PEM_cert_to_DER_cert(f.read())
    # The connection opened before the reload still works.
    assert get(d, pki, conn=kept)[0] == 200
    kept.close()
    # A broken pair on reload: refused, the certificate in use stays.
    with open(str(tmp_path / "kaleidod.key"), "w") as f:
        f.write("not a key\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: "serving on with the certificate in use" in d.log(), timeout=10,
             what="the refused reload")
    assert peer_cert(d, pki) == second
    assert get(d, pki)[0] == 200


def test_client_certificates_when_required(daemon_factory, mock, pki, tmp_path,
                                           tmp_path_factory):
    d = tls_daemon(daemon_factory, mock, pki, tmp_path, tls_client_ca=pki.ca,
                   tls_client_required="yes")
    good = pki.issue("robot-7", client=True)
    other = Pki(tmp_path_factory.mktemp("other"), name="someone else's CA")
    stranger = other.issue("stranger", client=True)
    status, _, body = get(d, pki, "/programs")
    assert status == 403 and b"client certificate" in body, body
    assert get(d, pki, "/programs", client=good)[0] == 200
    try:
        status, _, body = get(d, pki, "/programs", client=stranger)
        assert status == 403 and b"client certificate" in body, body
    except (ssl.SSLError, ConnectionError):
        pass  # refused in the handshake: refused too
    assert mock.count("GET /programs") == 1


def test_tls_settings_are_checked(daemon_factory, mock, pki, tmp_path):
    cert, key = pki.issue("checked")
    other_cert, _ = pki.issue("checked-other")
    cases = [
        ({"tls_cert": cert}, "set both"),
        ({"tls_cert": cert, "tls_key": str(tmp_path / "missing.key")}, "tls_key"),
        ({"tls_cert": other_cert, "tls_key": key}, "does not belong"),
        ({"tls_cert": cert, "tls_key": key, "tls_priorities": "NORMAL:+NONSENSE"},
         "tls_priorities"),
        ({"tls_client_required": "yes"}, "need"),
    ]
    for i, (server, want) in enumerate(cases):
        d = daemon_factory(mock, name="check%d" % i, config={"server": server})
        d.write_config()
        p = run_kaleidod(["--config", d.config_path, "--check-config"])
        assert p.returncode == 1, (server, p)
        assert want in p.stderr.decode(), (server, p.stderr)


def test_an_account_bound_to_a_client_certificate(daemon_factory, mock, pki, tmp_path):
    """tls_client_ca without tls_client_required: certificates are optional,
    but an account with a CERT subject is usable only over a connection that
    presented that certificate."""
    import re
    import urllib.parse
    good = pki.issue("robot-9", client=True)
    other = pki.issue("robot-10", client=True)
    acc = str(tmp_path / "accounts")
    secrets = {}
    for name, extra in (("robot", ["--cert-subject", "CN=robot-9"]), ("person", [])):
        p = run_kaleidod(["account", "--accounts", acc, "add", name, "--scope", "read"] + extra)
        assert p.returncode == 0, p.stderr
        secrets[name] = re.search(r"client secret: (\S+)", p.stdout.decode()).group(1)
    assert ":CN=robot-9:" in slurp(acc)
    cert, key = pki.issue("server-bound")
    d = daemon_factory(mock, config={"server": {"tls_cert": cert, "tls_key": key,
                                                "tls_client_ca": pki.ca},
                                     "gateway": {"accounts": acc}}).start()

    def call(method, path, client, body=None, token=None):
        c = http.client.HTTPSConnection("localhost", d.port, timeout=10,
                                        context=context(pki, client))
        hdrs = {"Host": "localhost:%d" % d.port}
        if token:
            hdrs["Authorization"] = "Bearer " + token
        if body:
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def token(name, client):
        st, data = call("POST", "/auth/oauth/token", client, urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": name,
             "client_secret": secrets[name]}))
        assert st == 200, data
        return __import__("json").loads(data)["access_token"]

    robot = token("robot", good)
    person = token("person", None)
    assert call("GET", "/programs", good, token=robot)[0] == 200
    st, body = call("GET", "/programs", None, token=robot)
    assert st == 403 and b"client certificate" in body and b"presented none" in body, body
    st, body = call("GET", "/programs", other, token=robot)
    assert st == 403 and b"presented another" in body, body
    assert call("GET", "/programs", None, token=person)[0] == 200
    assert call("GET", "/programs", other, token=person)[0] == 200


def test_idle_tls_connections_do_not_hold_up_a_client(daemon_factory, mock, pki, tmp_path):
    """200 connections that never finish (or never start) a handshake, and a
    normal client is served meanwhile, its answers whole."""
    d = tls_daemon(daemon_factory, mock, pki, tmp_path)
    idle = []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            if i % 2:
                s.sendall(b"\x16\x03\x01\x00\xff\x01")  # the start of a ClientHello
            idle.append(s)
        for _ in range(20):
            status, _, body = get(d, pki, "/programs")
            assert status == 200 and len(body) > 0
    finally:
        for s in idle:
            s.close()


def test_an_sdk_s_requests_session_trusts_the_lab_ca(tmp_path, daemon_factory, mock, pki):
    """What the SDKs do over TLS: a requests session that takes the CA from
    REQUESTS_CA_BUNDLE, the token endpoint, then calls with the token."""
    requests = pytest.importorskip("requests")
    import re
    acc = str(tmp_path / "accounts")
    p = run_kaleidod(["account", "--accounts", acc, "add", "lab-user", "--scope", "read"])
    secret = re.search(r"client secret: (\S+)", p.stdout.decode()).group(1)
    cert, key = pki.issue("server-sdk")
    d = daemon_factory(mock, config={"server": {"tls_cert": cert, "tls_key": key},
                                     "gateway": {"accounts": acc}}).start()
    os.environ["REQUESTS_CA_BUNDLE"] = pki.ca
    try:
        sess = requests.Session()
        base = "https://localhost:%d" % d.port
        r = sess.post(base + "/auth/oauth/token", timeout=10,
                      data={"grant_type": "client_credentials", "client_id": "lab-user",
                            "client_secret": secret})
        assert r.status_code == 200, r.text
        tok = r.json()["access_token"]
        r = sess.get(base + "/programs", timeout=10,
                     headers={"X-Kal-Authorization": "Bearer " + tok})
        assert r.status_code == 200 and r.headers["X-Cache"] in ("MISS", "HIT"), r.text
        del os.environ["REQUESTS_CA_BUNDLE"]
        with pytest.raises(requests.exceptions.SSLError):
            requests.Session().get(base + "/programs", timeout=10)
    finally:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
