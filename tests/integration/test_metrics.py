"""/_kaleidod/metrics: the Prometheus text format read by real consumers
(prometheus_client's parser, and promtool from Debian's prometheus
package), and counters that move with traffic by exactly what was sent."""
import os
import shutil
import subprocess
import time

import pytest

from harness import CLIENT_SECRET, KALEIDOD, SRCDIR, Sdk, request, wait_for
from test_gateway import account_add, bearer, login

prom_parser = pytest.importorskip(
    "prometheus_client.parser",
    reason="python3-prometheus-client is not installed (./quickstart test installs it)")


def scrape(d, headers=()):
    r = request(d.port, "GET", "/_kaleidod/metrics", headers)
    assert r.status == 200, r
    assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8", r
    return r.body.decode()


def families(text):
    """{family name: Metric} as prometheus_client parses it (a counter's
    family name is without _total; its samples keep it)."""
    return {m.name: m for m in prom_parser.text_string_to_metric_families(text)}


def value(fams, family, sample, **labels):
    """The one sample named sample with exactly these labels (a subset
    match is not enough: a label left out must not hide a second series)."""
    hits = [s for s in fams[family].samples
            if s.name == sample and s.labels == labels]
    assert len(hits) == 1, (sample, labels, fams[family].samples)
    return hits[0].value


def requests_of(fams, **labels):
    want = {"family": "none", "method": "GET", "code": "200", "cache": "none"}
    want.update(labels)
    for s in fams["kaleidod_requests"].samples:
        if s.labels == want:
            return s.value
    return 0


def test_format_names_and_types(daemon, mock):
    Sdk(daemon.port).get("/programs")
    text = scrape(daemon)
    fams = families(text)
    assert fams, text
    for name, m in fams.items():
        assert name.startswith("kaleidod_"), name
        assert m.documentation, "no # HELP for %s" % name
        assert m.type in ("counter", "gauge", "histogram"), (name, m.type)
        if m.type == "counter":
            assert all(s.name.endswith("_total") for s in m.samples), (name, m.samples)
    # Every line is a comment or a sample; every family announced once.
    helps = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# HELP ")]
    assert len(helps) == len(set(helps)), "a family announced twice"
    for want in ("kaleidod_requests", "kaleidod_request_duration_seconds",
                 "kaleidod_upstream_duration_seconds", "kaleidod_cache_entries",
                 "kaleidod_cache_bytes", "kaleidod_cache_evictions", "kaleidod_cache_prunes",
                 "kaleidod_cache_coalesced", "kaleidod_cache_stale_served",
                 "kaleidod_upstream_errors", "kaleidod_upstream_token_requests",
                 "kaleidod_upstream_token_expiry_timestamp_seconds", "kaleidod_connections",
                 "kaleidod_upstream_transfers", "kaleidod_build_info"):
        assert want in fams, (want, sorted(fams))
    assert fams["kaleidod_request_duration_seconds"].type == "histogram"
    bi = fams["kaleidod_build_info"].samples[0]
    assert bi.value == 1
    assert set(bi.labels) >= {"version", "libmicrohttpd", "libcurl", "sqlite"}, bi.labels
    v = subprocess.run([KALEIDOD, "--version"], capture_output=True, text=True).stdout
    assert "kaleidod %s\n" % bi.labels["version"] in v, v
    assert "libmicrohttpd %s\n" % bi.labels["libmicrohttpd"] in v, v
    assert "SQLite %s\n" % bi.labels["sqlite"] in v, v


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian package prometheus) is not installed")
def test_promtool_accepts_it(daemon, mock):
    s = Sdk(daemon.port)
    s.get("/programs")
    s.get("/record_views")
    p = subprocess.run(["promtool", "check", "metrics"], input=scrape(daemon),
                       capture_output=True, text=True, timeout=60)
    # promtool prints lint findings (names, units, _total) and fails on them.
    assert p.returncode == 0 and p.stdout.strip() == "" and p.stderr.strip() == "", (
        p.returncode, p.stdout, p.stderr)


def scrape_when(d, pred, what):
    """A scrape in which pred(families) holds.  A request is counted when
    its answer has gone out, which its client may see a moment before the
    serving thread counts it: wait for the count, do not sleep."""
    return wait_for(lambda: (lambda f: f if pred(f) else None)(families(scrape(d))),
                    what=what)


def test_counters_move_with_traffic(daemon, mock):
    s = Sdk(daemon.port)
    s.get("/programs")  # a miss: the first
    # An upstream transfer is timed when libcurl reports it done, which may
    # come after its client has the whole answer: wait for those counts too.
    def upstream_count(f):
        return value(f, "kaleidod_upstream_duration_seconds",
                     "kaleidod_upstream_duration_seconds_count")
    before = scrape_when(
        daemon, lambda f: requests_of(f, family="programs", cache="MISS") == 1 and
        requests_of(f, family="none", method="POST") == 1 and upstream_count(f) == 1,
        "the login and the first miss counted")
    hits0 = requests_of(before, family="programs", cache="HIT")
    dur0 = value(before, "kaleidod_request_duration_seconds",
                 "kaleidod_request_duration_seconds_count", cache="HIT")
    up0 = value(before, "kaleidod_upstream_duration_seconds",
                "kaleidod_upstream_duration_seconds_count")
    for _ in range(7):
        r = s.get("/programs")
        assert r.header("X-Cache") == "HIT", r
    r = s.get("/record_views")
    assert r.header("X-Cache") == "MISS", r
    r = s.request("POST", "/programs", body={"name": "new"})
    assert r.status in (200, 201), r
    r = daemon.request("BREW", "/programs")
    # Exactly these, or the wait times out: 7 hits, 1 miss, the login and
    # the write as POSTs, and the BREW.
    after = scrape_when(
        daemon, lambda f: requests_of(f, family="programs", cache="HIT") == hits0 + 7 and
        requests_of(f, family="record_views", cache="MISS") == 1 and
        requests_of(f, family="none", method="POST") == 2 and
        requests_of(f, family="none", method="other", code=str(r.status)) == 1 and
        upstream_count(f) >= up0 + 3,
        "every request of the test counted")
    # A method outside the known set is "other", never the client's word.
    methods = {x.labels["method"] for x in after["kaleidod_requests"].samples}
    assert "BREW" not in methods and "other" in methods, methods
    assert value(after, "kaleidod_request_duration_seconds",
                 "kaleidod_request_duration_seconds_count", cache="HIT") == dur0 + 7
    # The miss, the POST and the BREW went to the API (no hit did).
    assert value(after, "kaleidod_upstream_duration_seconds",
                 "kaleidod_upstream_duration_seconds_count") == up0 + 3
    # Buckets are cumulative and end at the count.
    buckets = [x for x in after["kaleidod_request_duration_seconds"].samples
               if x.name.endswith("_bucket") and x.labels["cache"] == "HIT"]
    counts = [x.value for x in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf", buckets
    assert counts[-1] == dur0 + 7
    # The same numbers /stats gives (the file's count once the keeper's
    # writes and the write's invalidation have landed: both read the file).
    def same_entries():
        st = daemon.stats()
        now = families(scrape(daemon))
        n = value(now, "kaleidod_cache_entries", "kaleidod_cache_entries")
        return (st, now) if n == st["cache"]["entries"] == daemon.stats()["cache"]["entries"] \
            else None
    st, now = wait_for(same_entries, what="metrics and stats agreeing on the file")
    assert value(now, "kaleidod_upstream_requests", "kaleidod_upstream_requests_total") == \
        st["upstream"]["requests"]
    assert value(now, "kaleidod_upstream_token_requests", "kaleidod_upstream_token_requests_total",
                 grant="client_credentials", result="ok") == st["upstream"]["token_grants"] == 1
    exp = value(now, "kaleidod_upstream_token_expiry_timestamp_seconds",
                "kaleidod_upstream_token_expiry_timestamp_seconds")
    assert time.time() < exp <= time.time() + 3600, exp
    assert value(now, "kaleidod_upstream_auth_ok", "kaleidod_upstream_auth_ok") == 1
    assert value(now, "kaleidod_connections", "kaleidod_connections") >= 1


def test_upstream_errors_by_kind(daemon, mock):
    Sdk(daemon.port).get("/programs")  # a token first
    # Reset every time: libcurl's own retry on a reused connection, then
    # kaleidod's one retry of a GET, then a 502 (test_families has the count).
    mock.fault("/workspaces/events", "reset", method="GET", times=3)
    r = daemon.get("/workspaces/events")
    assert r.status == 502, r
    fams = scrape_when(daemon, lambda f: requests_of(f, code="502") == 1, "the 502 counted")
    assert value(fams, "kaleidod_upstream_errors", "kaleidod_upstream_errors_total",
                 kind="connect") == 1
    for kind in ("timeout", "auth", "protocol", "busy", "throttled"):
        assert value(fams, "kaleidod_upstream_errors", "kaleidod_upstream_errors_total",
                     kind=kind) == 0, kind
    assert value(fams, "kaleidod_upstream_retried", "kaleidod_upstream_retried_total") == 1


def test_auth_failure_shows(daemon_factory, closed_port):
    d = daemon_factory("http://127.0.0.1:%d" % closed_port).start()
    r = d.get("/workspaces/events")
    assert r.status == 502, r
    fams = families(scrape(d))
    assert value(fams, "kaleidod_upstream_errors", "kaleidod_upstream_errors_total",
                 kind="auth") == 1
    assert value(fams, "kaleidod_upstream_auth_ok", "kaleidod_upstream_auth_ok") == 0
    since = value(fams, "kaleidod_upstream_auth_failing_since_timestamp_seconds",
                  "kaleidod_upstream_auth_failing_since_timestamp_seconds")
    assert time.time() - 60 < since <= time.time(), since
    assert value(fams, "kaleidod_upstream_token_requests",
                 "kaleidod_upstream_token_requests_total", grant="any", result="failed") >= 1


def test_secrets_never_in_metrics(daemon, mock):
    Sdk(daemon.port).get("/programs")
    text = scrape(daemon)
    assert CLIENT_SECRET not in text
    toks = mock.tokens()
    assert toks["access"], toks
    for tok in toks["access"] + toks["refresh"]:
        assert tok not in text


def lab_with(tmp_path, mock, daemon_factory, per_account):
    acc = str(tmp_path / "accounts")
    secrets = {"alice": account_add(acc, "alice", "--scope", "read"),
               "ops": account_add(acc, "ops", "--scope", "read,admin")}
    cfg = {"gateway": {"accounts": acc, "admin_from_loopback": "no"}}
    if per_account is not None:
        cfg["metrics"] = {"per_account": per_account}
    d = daemon_factory(mock, config=cfg).start()
    tokens = {}
    for name, secret in secrets.items():
        r = login(d.port, name, secret)
        assert r.status == 200, r
        tokens[name] = r.json()["access_token"]
    return d, tokens


def test_per_account_counters_when_asked(tmp_path, mock, daemon_factory):
    d, tokens = lab_with(tmp_path, mock, daemon_factory, "yes")
    # The metrics need the admin scope (a scraper's account), like stats.
    r = request(d.port, "GET", "/_kaleidod/metrics")
    assert r.status == 401, r
    r = request(d.port, "GET", "/_kaleidod/metrics", bearer(tokens["alice"]))
    assert r.status == 403, r
    for _ in range(3):
        assert request(d.port, "GET", "/programs", bearer(tokens["alice"])).status == 200
    fams = families(scrape(d, bearer(tokens["ops"])))
    # alice: the refused scrape and three lists; ops: its scrape so far.
    assert value(fams, "kaleidod_account_requests", "kaleidod_account_requests_total",
                 account="alice") == 4
    assert value(fams, "kaleidod_account_denied", "kaleidod_account_denied_total",
                 account="alice") == 1
    assert value(fams, "kaleidod_account_logins", "kaleidod_account_logins_total",
                 account="ops") == 1
    # Two logins: an access and a refresh token each.
    assert value(fams, "kaleidod_gateway_tokens", "kaleidod_gateway_tokens") == 4


def test_no_account_labels_by_default(tmp_path, mock, daemon_factory):
    d, tokens = lab_with(tmp_path, mock, daemon_factory, None)
    assert request(d.port, "GET", "/programs", bearer(tokens["alice"])).status == 200
    text = scrape(d, bearer(tokens["ops"]))
    assert "kaleidod_account_" not in text
    assert "alice" not in text
    assert "kaleidod_gateway_tokens 4" in text


def guide_block(heading):
    """The first ```yaml block after heading in docs/operations.md."""
    with open(os.path.join(SRCDIR, "docs", "operations.md")) as f:
        text = f.read()
    rest = text[text.index(heading):]
    start = rest.index("```yaml\n") + len("```yaml\n")
    return rest[start:rest.index("```\n", start)]


PROMTOOL_TEST = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'kaleidod_upstream_auth_ok{instance="a"}'
        values: '1 1 0 0 0 0 0 0 0 0'
      - series: 'kaleidod_upstream_auth_failing_since_timestamp_seconds{instance="a"}'
        values: '0 0 120 120 120 120 120 120 120 120'
      # 10 lookups a second, 3 of them hits: a 30% hit ratio.
      - series: 'kaleidod_requests_total{instance="a",family="programs",method="GET",code="200",cache="HIT"}'
        values: '0+180x70'
      - series: 'kaleidod_requests_total{instance="a",family="programs",method="GET",code="200",cache="MISS"}'
        values: '0+420x70'
      # and a tenth of all answers 502
      - series: 'kaleidod_requests_total{instance="a",family="none",method="GET",code="502",cache="none"}'
        values: '0+66x70'
    alert_rule_test:
      - eval_time: 5m
        alertname: KaleidodTokenFailing
        exp_alerts: []
      - eval_time: 8m
        alertname: KaleidodTokenFailing
        exp_alerts:
          - exp_labels: {instance: a}
            exp_annotations: {summary: "kaleidod on a cannot get an API token"}
      - eval_time: 65m
        alertname: KaleidodHitRatioLow
        exp_alerts:
          - exp_labels: {instance: a}
            exp_annotations: {summary: "kaleidod on a hits less than half the time"}
      - eval_time: 25m
        alertname: KaleidodApiErroring
        exp_alerts:
          - exp_labels: {instance: a}
            exp_annotations: {summary: "clients of kaleidod on a get 5xx answers"}
"""


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian package prometheus) is not installed")
def test_the_guide_alerting_rules_work(tmp_path):
    """The rules docs/operations.md gives are valid, and fire on the
    series they are about (promtool test rules)."""
    (tmp_path / "rules.yml").write_text(guide_block("### Alerting rules"))
    (tmp_path / "test.yml").write_text(PROMTOOL_TEST)
    p = subprocess.run(["promtool", "check", "rules", "rules.yml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "3 rules found" in p.stdout, p.stdout
    p = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.stdout, p.stderr)
