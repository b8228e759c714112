"""pytest plugin for kaleidod's integration suite.

- Prints TAP (for automake's tap-driver) to the fd named by KD_TAP_FD, or
  to stdout with pytest's capture suspended: "ok N - file::test",
  "not ok N - file::test" followed by the failure and the logs of the
  processes the test started as "# " lines, "ok N - name # SKIP reason", and
  the plan "1..N" at the end.
- Bounds every test: setup and call each get an alarm (default 120 s,
  600 s for @pytest.mark.slow, or @pytest.mark.timeout(N)).
- Function-scoped fixtures that start the mock API and kaleidod and stop
  exactly those processes, always.
"""

import os
import signal
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

DEFAULT_TIMEOUT = 120
SLOW_TIMEOUT = 600
LOG_TAIL_LINES = 150
TAP = None


# ---------------------------------------------------------------- TAP
class Tap:
    def __init__(self, config):
        self.config = config
        self.n = 0
        self.failed = 0
        self.reports = {}
        fd = os.environ.get("KD_TAP_FD")
        self.out = None
        if fd:
            try:
                self.out = os.fdopen(int(fd), "w", buffering=1, closefd=False)
            except OSError:
                self.out = None

    def write(self, text):
        if self.out is not None:
            self.out.write(text)
            self.out.flush()
            return
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            with capman.global_and_fixture_disabled():
                sys.stdout.write(text)
                sys.stdout.flush()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    @staticmethod
    def comment(text):
        return "".join("# %s\n" % line for line in str(text).splitlines())

    def line(self, ok, name, extra="", directive=""):
        self.n += 1
        if not ok:
            self.failed += 1
        name = name.replace("#", "\\#").replace("\n", " ")
        s = "%s %d - %s%s\n" % ("ok" if ok else "not ok", self.n, name, directive)
        self.write(s + (self.comment(extra) if extra else ""))


def logs_text(paths):
    out = []
    for label, path in paths:
        try:
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError as e:
            out.append("---- %s: %s" % (label, e))
            continue
        out.append("---- %s (%s), last %d of %d lines:" % (label, path,
                                                             min(len(lines), LOG_TAIL_LINES),
                                                             len(lines)))
        out.extend(lines[-LOG_TAIL_LINES:])
    return "\n".join(out)


def pytest_addoption(parser, pluginmanager):
    # Options that pytest's terminal plugin would define, and that assertion
    # rewriting and failure reports read, since the run script disables it.
    if not pluginmanager.has_plugin("terminal"):
        parser.addoption("--verbose", action="count", default=0, dest="verbose")
        parser.addoption("--tb", default="auto", dest="tbstyle",
                         choices=["auto", "long", "short", "no", "line", "native"])


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long transfers (still run by default)")
    config.addinivalue_line("markers", "timeout(seconds): per-phase bound for this test")
    global TAP
    TAP = Tap(config)


def pytest_collectreport(report):
    if report.failed:
        TAP.line(False, "%s (collection)" % (report.nodeid or "session"), str(report.longrepr))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    rep.kd_logs = list(getattr(item, "kd_logs", []))


def pytest_runtest_logreport(report):
    TAP.reports.setdefault(report.nodeid, []).append(report)


def pytest_runtest_logfinish(nodeid, location):
    tap = TAP
    reps = tap.reports.pop(nodeid, [])
    failed = [r for r in reps if r.failed]
    skipped = [r for r in reps if r.skipped]
    if failed:
        text = []
        for r in failed:
            text.append("[%s] %s" % (r.when, r.longreprtext))
            for title, content in r.sections:
                text.append("---- %s\n%s" % (title, content))
        logs = failed[-1].kd_logs or (reps[-1].kd_logs if reps else [])
        text.append(logs_text(logs))
        tap.line(False, nodeid, "\n".join(text))
    elif skipped:
        r = skipped[0]
        reason = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
        if reason.startswith("Skipped: "):
            reason = reason[len("Skipped: "):]
        tap.line(True, nodeid, directive=" # SKIP %s" % reason)
    else:
        tap.line(True, nodeid)


def pytest_sessionfinish(session, exitstatus):
    TAP.write("1..%d\n" % TAP.n)


# ---------------------------------------------------------------- timeouts
class TestTimeout(BaseException):
    """Raised by the alarm when a test phase overruns its bound."""


def _bound(item):
    m = item.get_closest_marker("timeout")
    if m and m.args:
        return int(m.args[0])
    if item.get_closest_marker("slow"):
        return SLOW_TIMEOUT
    return DEFAULT_TIMEOUT


def _alarm(seconds, phase):
    def handler(signum, frame):
        raise TestTimeout("test %s exceeded %d s" % (phase, seconds))
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return old


def _disarm(old):
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    old = _alarm(_bound(item), "setup")
    try:
        yield
    finally:
        _disarm(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    old = _alarm(_bound(item), "call")
    try:
        yield
    finally:
        _disarm(old)


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def mock_factory(request, tmp_path):
    """Starts mock API processes (extra CLI args); stops each one after the test."""
    started = []

    def make(*args, **kw):
        m = harness.Mock(tmp_path, *args, **kw)
        started.append(m)
        request.node.kd_logs = getattr(request.node, "kd_logs", []) + [("mock", m.log_path)]
        return m.start()

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def mock(mock_factory):
    return mock_factory()


@pytest.fixture
def daemon_factory(request, tmp_path):
    """Makes kaleidod instances (not started); stops every one after the test,
    failing the test if one crashed."""
    made = []

    def make(upstream, **kw):
        url = upstream if isinstance(upstream, str) else upstream.url
        kw.setdefault("name", "kaleidod%d" % len(made) if made else "kaleidod")
        d = harness.Daemon(tmp_path, url, **kw)
        made.append(d)
        request.node.kd_logs = getattr(request.node, "kd_logs", []) + [(d.name, d.log_path)]
        return d

    yield make
    errors = []
    for d in made:
        try:
            d.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def daemon(daemon_factory, mock):
    """kaleidod in front of the default mock, started and ready."""
    return daemon_factory(mock).start()


@pytest.fixture
def sdk(daemon):
    """A kalpy-like client of the default daemon."""
    return harness.Sdk(daemon.port)


@pytest.fixture
def closed_port():
    """A port bound on 127.0.0.1 with no listener: connections are refused,
    and nobody else can take it during the test."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()
