"""Everything that is not the token endpoint or a cache hit reaches the API
as the client sent it: method, path and query byte for byte, bodies byte for
byte (a multipart body labelled application/json included), end-to-end
headers kept; the client's credentials replaced by the upstream token,
hop-by-hop headers dropped, Host set to the API's, X-Forwarded-* added.
"""

import http.client
import os

import pytest

from harness import Sdk, md5_hex, raw_exchange


def hdr_map(echo):
    out = {}
    for k, v in echo["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_client_credentials_replaced_by_upstream_token(daemon, mock):
    s = Sdk(daemon.port, "kalbio")
    s.auth()
    r = s.request("GET", "/activities?x=1",
                  headers=[("Authorization", "Bearer iap-token-for-a-proxy")])
    assert r.status == 200, r
    h = hdr_map(r.json())
    upstream = mock.tokens()["access"]
    assert h["authorization"] == ["Bearer " + upstream[-1]], h
    assert h["x-kal-authorization"] == ["Bearer " + upstream[-1]], h
    text = r.body.decode()
    assert s.access_token not in text and "iap-token-for-a-proxy" not in text


@pytest.mark.parametrize("mode,flavour,sent,absent", [
    ("authorization", "kalbio", "authorization", "x-kal-authorization"),
    ("x-kal-authorization", "kalpy", "x-kal-authorization", "authorization"),
])
def test_auth_header_setting_picks_the_upstream_header(daemon_factory, mock_factory,
                                                       mode, flavour, sent, absent):
    m = mock_factory("--auth-header", "authorization" if mode == "authorization" else "x-kal")
    d = daemon_factory(m, config={"upstream": {"auth_header": mode}}).start()
    # The client carries its local token in the header kaleidod must not send.
    r = Sdk(d.port, flavour).get("/workspaces/members")
    assert r.status == 200, r
    h = hdr_map(r.json())
    assert h[sent][0].startswith("Bearer ") and h[sent][0][7:] in m.tokens()["access"], h
    assert absent not in h, "client's %s leaked upstream: %r" % (absent, h)


def test_hop_by_hop_headers_dropped_and_forwarding_headers_added(daemon, mock):
    tok = Sdk(daemon.port).auth()["access_token"]
    req = ("GET /activities/abc?q=1 HTTP/1.1\r\n"
           "Host: localhost\r\n"
           "Authorization: Bearer %s\r\n"
           "Connection: close, X-Hop-Named\r\n"
           "X-Hop-Named: must-not-pass\r\n"
           "Keep-Alive: timeout=5\r\n"
           "TE: trailers\r\n"
           "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
           "X-End-To-End: kept\r\n"
           "Accept: application/json\r\n"
           "\r\n" % tok).encode()
    r = raw_exchange(daemon.port, req)
    assert r.status == 200, r
    h = hdr_map(r.json())
    for gone in ("x-hop-named", "keep-alive", "te", "proxy-authorization"):
        assert gone not in h, "hop-by-hop %s forwarded: %r" % (gone, h)
    assert h.get("x-end-to-end") == ["kept"], h
    assert h.get("accept") == ["application/json"], h
    assert h.get("host") == ["127.0.0.1:%d" % mock.port], h
    assert any("127.0.0.1" in v for v in h.get("x-forwarded-for", [])), h
    assert h.get("x-forwarded-proto") == ["http"], h


@pytest.mark.parametrize("target", [
    "/records/search?search_text=%22a%20b%22&filters=%5B%7B%22k%22%3A1%7D%5D&limit=5",
    "/activities?activity_ids=a,b,c&x=&y=%2F",
    "/records/identifiers?z=1&a=2&z=0",
    "/records/abc%2Fdef/values?q=a+b&r=%C3%A9",
    "/odd//double/slash/path?;=;./../&&",
    "/workspaces/events?after=2024-01-01T00:00:00%2B00:00",
])
def test_target_forwarded_byte_for_byte(daemon, mock, target):
    r = Sdk(daemon.port).get(target)
    assert r.status == 200, r
    assert r.json()["target"] == target


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods_forwarded(daemon, mock, method):
    body = b'{"method": "%s"}' % method.encode() if method not in ("GET", "OPTIONS") else None
    r = Sdk(daemon.port).request(method, "/dashboards/d1/widgets/w2?v=1", body=body)
    assert r.status == 200, r
    e = r.json()
    assert e["method"] == method and e["target"] == "/dashboards/d1/widgets/w2?v=1"
    assert e["body_len"] == (len(body) if body else 0)
    if body:
        assert e["body_md5"] == md5_hex(body)


def test_binary_body_forwarded_byte_for_byte(daemon, mock):
    body = os.urandom(300 * 1024) + b"\r\n\r\n\x00\xff--"
    r = Sdk(daemon.port).request("POST", "/records", body=body,
                                 headers=[("Content-Type", "application/octet-stream")])
    assert r.status == 200, r
    assert r.json()["md5"] == md5_hex(body) and r.json()["received"] == len(body)


def test_multipart_body_labelled_json_passes_untouched(daemon, mock):
    boundary = "a1b2c3d4e5f6"
    body = ("--%s\r\nContent-Disposition: form-data; name=\"body\"\r\n\r\n"
            "{\"field_id\": \"f\"}\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n" % (boundary, boundary)).encode()
    body += os.urandom(70000) + ("\r\n--%s--\r\n" % boundary).encode()
    for target in ("/records/r1/values/file", "/properties/p1/file"):
        # Sdk sends Content-Type: application/json, as the SDK does over multipart.
        r = Sdk(daemon.port).request("POST", target, body=body)
        assert r.status == 200, r
        e = r.json()
        assert e["md5"] == md5_hex(body), (target, e["received"], len(body))
        assert e["content_type"] == "application/json"
        assert hdr_map(e)["content-length"] == [str(len(body))]


def test_chunked_request_body_forwarded(daemon, mock):
    pieces = [os.urandom(n) for n in (1, 4096, 100000, 7)]
    s = Sdk(daemon.port)
    r = s.request("POST", "/records/r2/values", body=iter(pieces))
    assert r.status == 200, r
    assert r.json()["md5"] == md5_hex(b"".join(pieces))


def test_extra_upstream_headers_from_config(daemon_factory, mock):
    d = daemon_factory(mock, config={"upstream": {
        "header": ["X-Proxy-Identity: lab-42", "X-Second: two words"]}}).start()
    r = Sdk(d.port).get("/activity_labels")
    assert r.status == 200, r
    h = hdr_map(r.json())
    assert h.get("x-proxy-identity") == ["lab-42"], h
    assert h.get("x-second") == ["two words"], h


def test_upstream_error_answers_passed_through(daemon, mock):
    mock.fault("/records/missing", "status", status=404)
    r = Sdk(daemon.port).get("/records/missing")
    assert r.status == 404, r
    assert r.json()["detail"] == "injected fault"


def test_keep_alive_connection_serves_several_requests(daemon, mock):
    s = Sdk(daemon.port)
    hdrs = dict(s.auth_headers())
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        for i in range(5):
            conn.request("GET", "/activities/%d" % i, headers=hdrs)
            r = conn.getresponse()
            assert r.status == 200
            assert r.read()
            assert not r.will_close, "kaleidod closed a keep-alive connection"
        conn.request("POST", "/activities", body=b'{"a": 1}',
                     headers=dict(hdrs, **{"Content-Type": "application/json"}))
        r = conn.getresponse()
        assert r.status == 200 and b'"body_len": 8' in r.read()
    finally:
        conn.close()
    assert mock.count("GET /activities/3") == 1
