#!/usr/bin/python3
"""A mock of the Kaleidoscope API for kaleidod's integration tests.

One process, Python standard library only.  It speaks HTTP/1.1 with
keep-alive, issues and checks OAuth tokens like the real API, answers the
three cached families (programs, entity_slices, record_views) with
deterministic JSON whose generation changes on writes, echoes the other
lists the newer SDK caches with their family and generation (moved on by
the writes that change them), streams large CSV
exports, hashes uploaded bodies, echoes everything else, and lets a test
inject faults and hold requests through the unauthenticated /_mock/ routes.
See README.md beside this file.
"""

import argparse
import gzip
import hashlib
import json
import os
import secrets
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections import deque
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20
FAMILIES = ("programs", "entity_slices", "record_views")
# Writes under these prefixes bump these families (besides a family's own prefix).
CROSS_WRITES = {
    "/push/imports": ("entity_slices", "record_views"),
    "/key_fields": ("entity_slices", "record_views"),
    "/data_fields": ("entity_slices", "record_views"),
}
# The other lists the newer SDK caches (issue 10): answered like any other
# GET (the echo), plus the list's family and generation, which the API's
# writes below move on.  Longest prefix wins; '*' is one path segment.
LISTS = {
    "key_fields": ("/key_fields",), "data_fields": ("/data_fields",),
    "property_fields": ("/property_fields",), "activities": ("/activities",),
    "activity_definitions": ("/activity_definitions",),
    "activity_labels": ("/activity_labels",), "dashboards": ("/dashboards",),
    "workspace_active": ("/workspaces/active",),
    "workspace_members": ("/workspaces/members",),
    "workspace_groups": ("/workspaces/groups",),
    "records": ("/records",),
    "record_operations": ("/records/*/operations", "/operations/*/records"),
}
NOT_LISTS = ("/records/export",)
# What each write of the API changes (a list's own prefix always changes it).
WRITE_EFFECTS = (
    ("/key_fields", ("key_fields", "entity_slices", "record_views")),
    ("/data_fields", ("data_fields", "entity_slices", "record_views")),
    ("/push/imports", ("entity_slices", "record_views", "key_fields", "data_fields")),
    ("/properties", ("property_fields", "records")),
    ("/records", ("records", "record_operations")),
    ("/operations/*/records", ("record_operations", "records")),
)
HOLD_MAX_S = 600.0


def csv_block():
    """The deterministic 64 KiB block that /records/export/csv repeats."""
    out = bytearray(b"id,name,value\n")
    i = 0
    while len(out) < 65536:
        out += b"%08d,compound-%d,%d.%03d\n" % (i, i, i * 7 % 1000, i % 1000)
        i += 1
    return bytes(out[:65536])


CSV_BLOCK = csv_block()
CSV_MIB = CSV_BLOCK * 16


def csv_bytes_md5(n):
    """md5 of the first n bytes of the export stream (for tests)."""
    h = hashlib.md5()
    left = n
    while left > 0:
        k = min(left, len(CSV_MIB))
        h.update(CSV_MIB[:k])
        left -= k
    return h.hexdigest()


def uid(*parts):
    h = hashlib.sha1(":".join(str(p) for p in parts).encode()).hexdigest()
    return "%s-%s-%s-%s-%s" % (h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])


def family_item(family, path, gen, i):
    ts = "2024-01-%02dT10:%02d:00Z" % (1 + i % 28, i % 60)
    ws = uid("workspace")
    if family == "programs":
        return {"id": uid(family, path, i), "title": "Program %d (gen %d)" % (i, gen),
                "created_at": ts, "created_by": uid("user", i % 7), "workspace_id": ws}
    if family == "entity_slices":
        return {"id": uid(family, path, i), "slice_name": "Entity %d (gen %d)" % (i, gen),
                "key_field_ids": [uid("kf", i, k) for k in range(2)], "workspace_id": ws,
                "is_primary": i == 0, "is_archived": False, "is_deleted": False,
                "created_at": ts, "updated_at": ts}
    return {"id": uid(family, path, i), "view_name": "View %d (gen %d)" % (i, gen),
            "entity_slice_id": uid("entity_slices", "/entity_slices", i % 5),
            "program_ids": [uid("programs", "/programs", i % 3)],
            "operation_ids": [uid("op", i)], "operation_definition_ids": [uid("opdef", i)],
            "view_fields": [{"data_field_id": uid("df", i, k), "lookup_field_id": None}
                            for k in range(4)],
            "filters": [{"field": uid("df", i, 0), "op": "eq", "value": "x%d" % i}],
            "sorts": [{"field": uid("df", i, 1), "dir": "asc"}],
            "created_at": ts, "updated_at": ts}


class State:
    def __init__(self, args):
        self.lock = threading.Condition()
        self.cfg = {
            "latency_ms": args.latency_ms, "expires_in": args.expires_in,
            "client_id": args.client_id, "client_secret": args.client_secret,
            "programs_bytes": 2048, "entity_slices_bytes": 8192,
            "record_views_bytes": 65536, "gzip": False, "cache_control": None,
            "auth_header": args.auth_header, "echo_headers": True,
            # Family answers (200 and 304): validators sent, extra headers.
            "send_etag": True, "send_last_modified": True, "extra_headers": [],
        }
        self.access = {}        # token -> monotonic expiry
        self.refresh = set()
        self.issued_access = []
        self.issued_refresh = []
        self.grants = []         # {"grant", "t" (monotonic), "expires_in"}
        self.gen = {f: 1 for f in FAMILIES + tuple(LISTS)}
        # Whole seconds, as Last-Modified says them; a bump always moves it
        # to a later second, so If-Modified-Since tells generations apart.
        self.modified = {f: int(time.time()) for f in FAMILIES + tuple(LISTS)}
        self.counts = {}
        self.conditional = {}    # "METHOD /path" -> requests with INM or IMS
        self.not_modified = {}   # "METHOD /path" -> 304s answered
        self.tok = {"client_credentials": 0, "refresh_token": 0, "rejected": 0}
        self.inflight = 0
        self.inflight_peak = 0  # most requests at once since start or DELETE /_mock/peak
        self.total = 0
        self.unauthorized = 0
        self.held = 0
        self.holds = []          # path prefixes
        self.release_epoch = 0
        self.faults = []
        self.log = deque(maxlen=200)
        self.bodies = {}         # (family, path, gen, size) -> bytes

    def family_body(self, family, path):
        with self.lock:
            gen = self.gen[family]
            size = self.cfg[family + "_bytes"]
            key = (family, path, gen, size)
            body = self.bodies.get(key)
        if body is not None:
            return body, gen
        items, n, i = [], 2, 0
        while n < size or not items:
            it = family_item(family, path, gen, i)
            items.append(it)
            n += len(json.dumps(it)) + 2
            i += 1
        body = json.dumps(items).encode()
        with self.lock:
            if len(self.bodies) > 32:
                self.bodies.clear()
            self.bodies[key] = body
        return body, gen

    def bump(self, families):
        with self.lock:
            for f in families:
                self.gen[f] += 1
                self.modified[f] = max(int(time.time()), self.modified[f] + 1)

    def new_pair(self, grant):
        at = "mockat_" + secrets.token_urlsafe(24)
        rt = "mockrt_" + secrets.token_urlsafe(24)
        with self.lock:
            self.access[at] = time.monotonic() + self.cfg["expires_in"]
            self.refresh.add(rt)
            self.issued_access.append(at)
            self.issued_refresh.append(rt)
            exp = self.cfg["expires_in"]
            self.grants.append({"grant": grant, "t": time.monotonic(), "expires_in": exp})
        return {"access_token": at, "refresh_token": rt, "expires_in": exp,
                "token_type": "bearer"}

    def token_ok(self, tok):
        with self.lock:
            exp = self.access.get(tok)
            return exp is not None and time.monotonic() < exp

    def take_fault(self, method, path):
        with self.lock:
            for f in self.faults:
                if not path.startswith(f["path"]):
                    continue
                if f.get("method") and f["method"].upper() != method:
                    continue
                if f["times"] is not None:
                    if f["times"] <= 0:
                        continue
                    f["times"] -= 1
                return dict(f)
        return None


def prefix_match(path, prefix):
    return path == prefix or path.startswith(prefix.rstrip("/") + "/") or \
        (prefix.endswith("/") and path.startswith(prefix))


def covers(prefix, path):
    """Segment by segment, '*' standing for any one non-empty segment;
    the prefix's length when it covers path, else 0."""
    want = prefix.rstrip("/").split("/")
    have = path.split("/")
    if len(have) < len(want):
        return 0
    for w, h in zip(want, have):
        if (w == "*" and not h) or (w != "*" and w != h):
            return 0
    return len(prefix)


def list_of(path):
    if any(covers(p, path) for p in NOT_LISTS):
        return None
    best, name = 0, None
    for n, prefixes in LISTS.items():
        for p in prefixes:
            if covers(p, path) > best:
                best, name = covers(p, path), n
    return name


def family_of(path):
    for f in FAMILIES:
        if prefix_match(path, "/" + f):
            return f
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, delayed ACKs
    # add ~40 ms to every answer and hide what the proxy costs.
    disable_nagle_algorithm = True
    server_version = "KaleidoscopeMock/1.0"
    sys_version = ""

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("mock: %s\n" % (fmt % args))

    # Every method goes through one dispatcher.
    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # ---- body helpers ------------------------------------------------
    def _readline(self):
        line = self.rfile.readline(65537)
        if not line:
            raise ConnectionError("eof in chunked body")
        return line

    def iter_body(self):
        """Yields the request body in pieces (<= 1 MiB), decoding chunked."""
        self._body_consumed = True
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            while True:
                size = int(self._readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self._readline() not in (b"\r\n", b"\n"):
                        pass
                    return
                left = size
                while left > 0:
                    d = self.rfile.read(min(left, CHUNK))
                    if not d:
                        raise ConnectionError("eof in chunk")
                    left -= len(d)
                    yield d
                self._readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                d = self.rfile.read(min(left, CHUNK))
                if not d:
                    raise ConnectionError("eof in body")
                left -= len(d)
                yield d

    def has_body(self):
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower() or \
            int(self.headers.get("Content-Length") or 0) > 0

    def read_body(self, keep=1 << 20):
        """Returns (length, md5 hex, first `keep` bytes)."""
        h = hashlib.md5()
        n = 0
        kept = bytearray()
        for d in self.iter_body():
            h.update(d)
            n += len(d)
            if len(kept) < keep:
                kept += d[:keep - len(kept)]
        return n, h.hexdigest(), bytes(kept)

    def drain_small(self, limit=16 << 20):
        """Before an early answer (401, injected status): reads a body of at
        most limit bytes so the connection stays usable and the request log
        shows its length; a larger one is left unread (connection closed)."""
        if self._body_consumed or not self.has_body():
            return
        if int(self.headers.get("Content-Length") or 0) > limit:
            return
        self._entry["body_len"] = self.read_body(keep=0)[0]

    # ---- answer helpers ----------------------------------------------
    def send(self, status, body=b"", ctype="application/json", headers=(), truncate=None,
             say_close=True):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        if truncate is None:
            truncate = self._truncate
        unread = self.has_body() and not self._body_consumed
        if status in (204, 304):
            body = b""      # never a body (RFC 9110 15.3.5, 15.4.5)
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if unread or truncate:
            if say_close or truncate:
                self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        if truncate:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.abort()
            return
        self.wfile.write(body)

    @staticmethod
    def padded(obj, n):
        """obj as JSON padded (a "pad" field) to exactly n bytes when it fits."""
        body = json.dumps(obj).encode()
        if n > len(body) + 10:
            obj = dict(obj, pad="")
            obj["pad"] = "x" * (n - len(json.dumps(obj).encode()))
            body = json.dumps(obj).encode()
        return body

    def linger(self, limit_s=30.0):
        """After an answer that leaves the request body unread: half-close,
        then read and drop what the client still sends until it closes
        (bounded), so the answer is not lost to a reset."""
        if self._body_consumed or not self.has_body():
            return
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            deadline = time.monotonic() + limit_s
            while time.monotonic() < deadline:
                try:
                    if not self.connection.recv(CHUNK):
                        break
                except socket.timeout:
                    continue
        except OSError:
            pass

    def abort(self):
        """Closes the connection at once with a reset."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            os.close(self.connection.detach())
        except OSError:
            pass

    # ---- dispatch ----------------------------------------------------
    def dispatch(self):
        st = self.server.state
        self._truncate = False
        self._body_consumed = False
        parts = self.requestline.split(" ")
        self.target = parts[1] if len(parts) >= 2 else self.path
        self.rpath = self.target.split("?", 1)[0]
        self.query = self.target.split("?", 1)[1] if "?" in self.target else ""
        method = self.command
        try:
            if self.rpath.startswith("/_mock/") or self.rpath == "/_mock":
                return self.control(method)
            entry = {"method": method, "target": self.target,
                     "headers": [[k, v] for k, v in self.headers.items()],
                     "body_len": None, "time": time.time()}
            self._entry = entry
            key = "%s %s" % (method, self.rpath)
            self._key = key
            cond = "If-None-Match" in self.headers or "If-Modified-Since" in self.headers
            with st.lock:
                st.log.append(entry)
                st.counts[key] = st.counts.get(key, 0) + 1
                if cond:
                    st.conditional[key] = st.conditional.get(key, 0) + 1
                st.total += 1
                st.inflight += 1
                st.inflight_peak = max(st.inflight_peak, st.inflight)
            try:
                self.api(method)
            finally:
                with st.lock:
                    st.inflight -= 1
        except (BrokenPipeError, ConnectionResetError, ConnectionError, socket.timeout):
            self.close_connection = True

    def control(self, method):
        st = self.server.state
        p = self.rpath
        body = b""
        if self.has_body():
            body = self.read_body()[2]
        data = json.loads(body) if body.strip() else {}
        if p == "/_mock/stats" and method == "GET":
            with st.lock:
                out = {"counts": dict(st.counts), "conditional": dict(st.conditional),
                       "not_modified": dict(st.not_modified), "token": dict(st.tok),
                       "inflight": st.inflight, "inflight_peak": st.inflight_peak,
                       "total": st.total,
                       "unauthorized": st.unauthorized, "held": st.held,
                       "gens": dict(st.gen), "faults": [dict(f) for f in st.faults]}
            return self.send(200, out)
        if p == "/_mock/requests" and method == "GET":
            q = urllib.parse.parse_qs(self.query)
            pre = q.get("path", [""])[0]
            with st.lock:
                out = [{k: e[k] for k in ("method", "target", "headers", "body_len", "time")}
                       for e in st.log if e["target"].split("?", 1)[0].startswith(pre)]
            return self.send(200, out)
        if p == "/_mock/tokens" and method == "GET":
            with st.lock:
                out = {"access": list(st.issued_access), "refresh": list(st.issued_refresh),
                       "grants": [dict(g) for g in st.grants]}
            return self.send(200, out)
        if p == "/_mock/config" and method == "POST":
            with st.lock:
                for k, v in data.items():
                    if k not in st.cfg:
                        return self.send(400, {"detail": "unknown key %s" % k})
                    st.cfg[k] = v
                out = dict(st.cfg)
            return self.send(200, out)
        if p == "/_mock/config" and method == "GET":
            with st.lock:
                out = dict(st.cfg)
            return self.send(200, out)
        if p == "/_mock/fault" and method == "POST":
            f = {"path": data.get("path", "/"), "method": data.get("method"),
                 "kind": data.get("kind", "status"), "status": int(data.get("status", 503)),
                 "delay_ms": int(data.get("delay_ms", 0)), "times": data.get("times"),
                 "body_bytes": data.get("body_bytes"), "drain": bool(data.get("drain", True)),
                 "raw": data.get("raw"), "wait": bool(data.get("wait", False))}
            if f["kind"] not in ("status", "reset", "slow", "truncate", "hang", "raw"):
                return self.send(400, {"detail": "unknown kind"})
            if f["kind"] == "raw" and not isinstance(f["raw"], str):
                return self.send(400, {"detail": "kind raw needs raw (a string)"})
            with st.lock:
                st.faults.append(f)
            return self.send(200, f)
        if p == "/_mock/fault" and method == "DELETE":
            with st.lock:
                st.faults = []
                st.release_epoch += 1
                st.lock.notify_all()
            return self.send(200, {"cleared": True})
        if p == "/_mock/revoke" and method == "POST":
            with st.lock:
                n = len(st.access)
                st.access.clear()
                if data.get("refresh"):
                    st.refresh.clear()
            return self.send(200, {"revoked": n})
        if p == "/_mock/hold" and method == "POST":
            with st.lock:
                st.holds.append(data.get("path", "/"))
            return self.send(200, {"holding": data.get("path", "/")})
        if p == "/_mock/release" and method == "POST":
            with st.lock:
                st.holds = []
                st.release_epoch += 1
                st.lock.notify_all()
            return self.send(200, {"released": True})
        if p == "/_mock/peak" and method == "DELETE":
            # The peak of concurrent API requests starts again from now.
            with st.lock:
                st.inflight_peak = st.inflight
            return self.send(200, {"inflight_peak": st.inflight_peak})
        if p == "/_mock/bump" and method == "POST":
            st.bump([f for f in data.get("families", FAMILIES) if f in st.gen])
            return self.send(200, {"gens": st.gen})
        return self.send(404, {"detail": "no such control route"})

    def held_until_released(self):
        """Counted in "held" while it waits for /_mock/release."""
        st = self.server.state
        with st.lock:
            st.held += 1
        try:
            self.wait_released()
        finally:
            with st.lock:
                st.held -= 1

    def wait_released(self):
        """Blocks until /_mock/release or DELETE /_mock/fault (bounded)."""
        st = self.server.state
        deadline = time.monotonic() + HOLD_MAX_S
        with st.lock:
            epoch = st.release_epoch
            while st.release_epoch == epoch and time.monotonic() < deadline:
                st.lock.wait(0.5)

    def api(self, method):
        st = self.server.state
        with st.lock:
            latency = st.cfg["latency_ms"]
        fault = st.take_fault(method, self.rpath)
        if fault and fault["wait"]:
            # Held like "hang" first, then the fault itself: a failure that
            # arrives when the test says so (every waiter is queued by then).
            self.held_until_released()
        if fault:
            kind = fault["kind"]
            if kind == "reset":
                return self.abort()
            if kind == "status":
                if fault["drain"]:
                    self.drain_small()
                body = {"detail": "injected fault", "status": fault["status"]}
                if fault["body_bytes"] is not None:
                    body = self.padded(body, int(fault["body_bytes"]))
                # Undrained: the answer does not say "Connection: close"
                # (curl keeps sending a body to an answer that does).
                self.send(fault["status"], body, say_close=fault["drain"])
                if not fault["drain"]:
                    self.linger()
                return
            if kind == "raw":
                self.drain_small()
                self.close_connection = True
                self.wfile.write(fault["raw"].encode("latin-1"))
                self.wfile.flush()
                return
            if kind == "slow":
                time.sleep(fault["delay_ms"] / 1000.0)
            if kind == "hang":
                self.held_until_released()
            if kind == "truncate":
                self._truncate = True
        if latency:
            time.sleep(latency / 1000.0)
        if self.rpath == "/auth/oauth/token":
            return self.token(method)
        if not self.authorized():
            with st.lock:
                st.unauthorized += 1
            self.drain_small()
            return self.send(401, {"detail": "invalid token"})
        with st.lock:
            holding = any(self.rpath.startswith(h) for h in st.holds)
            if holding:
                st.held += 1
        if holding:
            try:
                self.wait_released()
            finally:
                with st.lock:
                    st.held -= 1
        fam = family_of(self.rpath)
        if method in ("GET", "HEAD"):
            if fam:
                return self.family(fam)
            if self.rpath == "/records/export/csv":
                return self.export()
            lst = list_of(self.rpath)
            if lst:
                ans = self.echo_data(method)
                with st.lock:
                    ans.update(family=lst, gen=st.gen[lst])
                return self.send(200, ans)
            return self.echo(method)
        # A write.
        ans = self.echo_data(method)
        bumped = set()
        if fam:
            bumped.add(fam)
        for pre, fams in CROSS_WRITES.items():
            if prefix_match(self.rpath, pre):
                bumped.update(fams)
        if list_of(self.rpath):
            bumped.add(list_of(self.rpath))
        for pre, fams in WRITE_EFFECTS:
            if covers(pre, self.rpath):
                bumped.update(fams)
        if bumped:
            st.bump(sorted(bumped))
        return self.send(200, ans)

    def authorized(self):
        st = self.server.state
        mode = st.cfg["auth_header"]

        def bearer(name):
            v = self.headers.get(name, "")
            return v[7:].strip() if v[:7].lower() == "bearer " else ""
        a = bearer("Authorization")
        x = bearer("X-Kal-Authorization")
        if mode == "authorization":
            return st.token_ok(a)
        if mode == "x-kal":
            return st.token_ok(x)
        if mode == "both":
            return st.token_ok(a) and st.token_ok(x)
        return st.token_ok(a) or st.token_ok(x)

    def token(self, method):
        st = self.server.state
        if method != "POST":
            return self.send(405, {"detail": "method not allowed"})
        n, _, raw = self.read_body()
        self._entry["body_len"] = n
        ctype = self.headers.get("Content-Type", "")
        try:
            if "json" in ctype:
                form = {k: str(v) for k, v in json.loads(raw or b"{}").items()}
            else:
                form = {k: v[0] for k, v in urllib.parse.parse_qs(
                    raw.decode(), keep_blank_values=True).items()}
        except (ValueError, AttributeError, UnicodeDecodeError):
            return self.send(400, {"detail": "malformed token request"})
        grant = form.get("grant_type")
        with st.lock:
            cid, csec = st.cfg["client_id"], st.cfg["client_secret"]
        if grant == "client_credentials":
            ok = form.get("client_id") == cid and form.get("client_secret") == csec
            if ok:
                with st.lock:
                    st.tok["client_credentials"] += 1
                return self.send(200, st.new_pair(grant),
                                 headers=[("Cache-Control", "no-store")])
            with st.lock:
                st.tok["rejected"] += 1
            return self.send(401, {"detail": "invalid client credentials"})
        if grant == "refresh_token":
            rt = form.get("refresh_token", "")
            with st.lock:
                ok = rt in st.refresh
                if ok:
                    st.refresh.discard(rt)
                    st.tok["refresh_token"] += 1
                else:
                    st.tok["rejected"] += 1
            if ok:
                return self.send(200, st.new_pair(grant), headers=[("Cache-Control", "no-store")])
            return self.send(401, {"detail": "invalid refresh token"})
        with st.lock:
            st.tok["rejected"] += 1
        return self.send(400, {"detail": "unsupported grant_type"})

    def family(self, fam):
        st = self.server.state
        if self.has_body():
            self._entry["body_len"] = self.read_body()[0]
        body, gen = st.family_body(fam, self.rpath)
        etag = '"%s-%d"' % (hashlib.md5(body).hexdigest()[:16], gen)
        with st.lock:
            modified = st.modified[fam]
            lm = formatdate(modified, usegmt=True)
            cc = st.cfg["cache_control"]
            gz = st.cfg["gzip"]
            send_etag = st.cfg["send_etag"]
            send_lm = st.cfg["send_last_modified"]
            extra = [(str(k), str(v)) for k, v in st.cfg["extra_headers"]]
        hdrs = []
        if send_etag:
            hdrs.append(("ETag", etag))
        if send_lm:
            hdrs.append(("Last-Modified", lm))
        if cc:
            hdrs.append(("Cache-Control", cc))
        hdrs += extra
        if self.not_modified(etag if send_etag else None, modified if send_lm else None):
            with st.lock:
                st.not_modified[self._key] = st.not_modified.get(self._key, 0) + 1
            self.send_response(304)
            for k, v in hdrs:
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if gz:
            body = gzip.compress(body)
            hdrs.append(("Content-Encoding", "gzip"))
            hdrs.append(("Vary", "Accept-Encoding"))
        return self.send(200, body, headers=hdrs)

    def not_modified(self, etag, modified):
        """RFC 9110 13.2.2: If-None-Match (weak comparison) decides when
        present; else If-Modified-Since against the Last-Modified second.
        None for a validator the answer does not carry."""
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            if etag is None:
                return False
            tags = [t.strip() for t in inm.split(",")]
            weak = [t[2:] if t.startswith("W/") else t for t in tags]
            return "*" in tags or etag in weak
        ims = self.headers.get("If-Modified-Since")
        if ims is None or modified is None:
            return False
        try:
            since = parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return False    # an invalid date is ignored (RFC 9110 13.1.3)
        return modified <= since

    def export(self):
        q = urllib.parse.parse_qs(self.query)
        size = int(q.get("size", ["65536"])[0])
        chunked = q.get("chunked", ["0"])[0] == "1"
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        if self._truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        left = size if not self._truncate else size // 2
        while left > 0:
            k = min(left, len(CSV_MIB))
            if chunked:
                self.wfile.write(b"%x\r\n" % k + CSV_MIB[:k] + b"\r\n")
            else:
                self.wfile.write(CSV_MIB[:k] if k < len(CSV_MIB) else CSV_MIB)
            left -= k
        if self._truncate:
            return self.abort()
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def echo_data(self, method):
        n, md5, _ = self.read_body(keep=0)
        self._entry["body_len"] = n
        headers = [[k, v] for k, v in self.headers.items()]
        with self.server.state.lock:
            if not self.server.state.cfg["echo_headers"]:
                headers = [[k, "(redacted)" if k.lower() in ("authorization",
                                                             "x-kal-authorization") else v]
                           for k, v in headers]
        return {"method": method, "target": self.target,
                "headers": headers,
                "body_len": n, "body_md5": md5, "received": n, "md5": md5,
                "content_type": self.headers.get("Content-Type")}

    def echo(self, method):
        return self.send(200, self.echo_data(method))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv=None):
    ap = argparse.ArgumentParser(description="Kaleidoscope API mock")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fd", type=int, default=None, help="an already listening socket")
    ap.add_argument("--client-id", default="demo-client")
    ap.add_argument("--client-secret", default="demo-secret")
    ap.add_argument("--expires-in", type=int, default=3600)
    ap.add_argument("--latency-ms", type=int, default=0)
    ap.add_argument("--auth-header", default="either",
                    choices=("either", "both", "authorization", "x-kal"))
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.fd is not None:
        srv = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
        srv.socket.close()
        srv.socket = socket.socket(fileno=args.fd)
        srv.server_address = srv.socket.getsockname()
    else:
        srv = Server(("127.0.0.1", args.port), Handler)
    srv.state = State(args)
    srv.verbose = args.verbose
    sys.stdout.write("PORT %d\n" % srv.server_address[1])
    sys.stdout.flush()
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
