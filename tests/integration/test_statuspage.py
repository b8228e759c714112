"""/_kaleidod/, the status page, in a real browser: Debian's headless
Chromium driven through chromedriver (python3-selenium).  The numbers the
browser renders are checked against /_kaleidod/stats; the purge button is
clicked and the purge checked at the cache; with JavaScript off the page
still shows everything and reloads itself.  The screenshot in the README
(docs/status-page.png) is what KD_SCREENSHOT=PATH makes this test save."""
import html.parser
import os
import shutil
import subprocess

import pytest

from harness import CLIENT_SECRET, KALEIDOD, Sdk, request, wait_for

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="python3-selenium is not installed (./quickstart test does)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMEDRIVER = "/usr/bin/chromedriver"


def browser(javascript=True):
    if not os.access(CHROMEDRIVER, os.X_OK) or shutil.which("chromium") is None:
        pytest.skip("chromium and chromium-driver are not installed (./quickstart test does)")
    o = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1100,1300", "--no-first-run", "--disable-extensions"):
        o.add_argument(a)
    if not javascript:
        o.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)


@pytest.fixture
def chrome():
    b = browser()
    yield b
    b.quit()


@pytest.fixture
def chrome_nojs():
    b = browser(javascript=False)
    yield b
    b.quit()


def text(b, element_id):
    return b.find_element(By.ID, element_id).text


def row(b, family, cls):
    return b.find_element(By.CSS_SELECTOR, 'tr[data-family="%s"] td.%s' % (family, cls)).text


def traffic(d):
    s = Sdk(d.port)
    assert s.get("/programs").header("X-Cache") == "MISS"
    for _ in range(3):
        assert s.get("/programs").header("X-Cache") == "HIT"
    assert s.get("/record_views").header("X-Cache") == "MISS"
    # Both answers in the file before the page counts its entries.
    wait_for(lambda: d.stats()["cache"]["entries"] == 2, what="two entries in the file")


def test_rendered_numbers_match_stats_and_purge_works(daemon, mock, chrome):
    traffic(daemon)
    chrome.get(daemon.url + "/_kaleidod/?refresh=0")
    assert chrome.title == "kaleidod status"
    st = daemon.stats()  # no cacheable request since the page was made
    t = st["total"]
    assert int(text(chrome, "hits")) == t["hits"] == 3
    assert int(text(chrome, "misses")) == t["misses"] == 2
    assert int(text(chrome, "stale")) == t["stale"]
    looked = t["hits"] + t["misses"] + t["stale"] + t["revalidated"]
    assert text(chrome, "hit-ratio") == "%.1f%%" % (100.0 * t["hits"] / looked) == "60.0%"
    assert text(chrome, "auth-state") == "ok"
    assert text(chrome, "upstream") == mock.url
    for fam, counts in st["families"].items():
        assert int(row(chrome, fam, "hits")) == counts["hits"], fam
        assert int(row(chrome, fam, "misses")) == counts["misses"], fam
    entries = [int(e.text) for e in chrome.find_elements(By.CSS_SELECTOR, "td.entries")]
    assert sum(entries) == st["cache"]["entries"] == 2, entries
    assert int(row(chrome, "programs", "entries")) == 1
    assert int(row(chrome, "programs", "bytes")) > 0
    version = subprocess.run([KALEIDOD, "--version"], capture_output=True,
                             text=True).stdout.splitlines()[0]
    assert version == "kaleidod " + text(chrome, "version")
    shot = os.environ.get("KD_SCREENSHOT")
    if shot:
        chrome.save_screenshot(shot)

    # The purge button posts {"family": "programs"} and says what it did.
    button = chrome.find_element(By.CSS_SELECTOR,
                                 'tr[data-family="programs"] button.purge')
    assert button.is_displayed()
    button.click()
    wait_for(lambda: text(chrome, "purge-result"), what="the purge's answer on the page")
    assert text(chrome, "purge-result") == "Purged 1 entries of programs."
    assert daemon.stats()["cache"]["purged"] == 1
    assert Sdk(daemon.port).get("/programs").header("X-Cache") == "MISS"
    assert Sdk(daemon.port).get("/record_views").header("X-Cache") == "HIT"
    # Nothing the browser ran failed (a CSP refusal would show here).
    errors = [e for e in chrome.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors


def test_without_javascript(daemon, mock, chrome_nojs):
    traffic(daemon)
    chrome_nojs.get(daemon.url + "/_kaleidod/")
    st = daemon.stats()
    assert int(text(chrome_nojs, "hits")) == st["total"]["hits"] == 3
    assert text(chrome_nojs, "hit-ratio") == "60.0%"
    # No script ran: the buttons stay hidden, the way to purge is shown.
    buttons = chrome_nojs.find_elements(By.CSS_SELECTOR, "button.purge")
    assert buttons and not any(b.is_displayed() for b in buttons)
    assert "curl" in chrome_nojs.find_element(By.TAG_NAME, "body").text
    # It reloads itself: a meta refresh, since no script will.
    refresh = chrome_nojs.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]')
    assert refresh.get_attribute("content") == "10"


class Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href", "action", "srcset", "poster", "data"):
                self.refs.append((tag, k, v))


def test_self_contained_and_locked_down(daemon, mock):
    r = daemon.get("/_kaleidod/")
    assert r.status == 200, r
    assert r.header("Content-Type") == "text/html; charset=utf-8"
    csp = r.header("Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src 'self'" in csp, csp
    assert "frame-ancestors 'none'" in csp, csp
    assert r.header("X-Content-Type-Options") == "nosniff"
    assert r.header("Cache-Control") == "no-store"
    p = Refs()
    p.feed(r.body.decode())
    assert p.refs, "no links at all?"
    for tag, attr, v in p.refs:
        # Only this daemon's own pages: no other host, no scheme at all.
        assert "//" not in v and ":" not in v, (tag, attr, v)
    js = daemon.get("/_kaleidod/status.js")
    assert js.status == 200 and js.header("Content-Type") == "text/javascript; charset=utf-8"
    assert b"/_kaleidod/purge" not in js.body and b'fetch("purge"' in js.body
    assert CLIENT_SECRET.encode() not in r.body
    for tok in mock.tokens()["access"]:
        assert tok.encode() not in r.body


def test_failing_auth_and_last_errors(daemon_factory, closed_port):
    d = daemon_factory("http://127.0.0.1:%d" % closed_port).start()
    wait_for(lambda: "cannot authenticate" in d.log(), what="the auth failure logged")
    r = d.get("/_kaleidod/?refresh=0")
    page = r.body.decode()
    assert 'id="auth-state" class="bad">failing<' in page, page
    assert 'id="failing-since"' in page
    # The warning is among the last errors, as logged (redacted).
    assert "cannot authenticate to http://127.0.0.1:%d" % closed_port in page
    assert CLIENT_SECRET not in page


def test_purge_from_another_origin_is_refused(daemon, mock):
    """The page's own origin may post a purge; another site's page may not."""
    body = b'{"family": "programs"}'
    same = request(daemon.port, "POST", "/_kaleidod/purge",
                   [("Content-Type", "application/json"),
                    ("Origin", "http://127.0.0.1:%d" % daemon.port)], body)
    assert same.status == 200, same
    other = request(daemon.port, "POST", "/_kaleidod/purge",
                    [("Content-Type", "application/json"),
                     ("Origin", "http://evil.example")], body)
    assert other.status == 403, other
    # The same host on another port is another origin.
    port = request(daemon.port, "POST", "/_kaleidod/purge",
                   [("Content-Type", "application/json"),
                    ("Origin", "http://127.0.0.1:%d" % (daemon.port + 1))], body)
    assert port.status == 403, port
