"""The browser tests' harness: flashclaim on the test host with real Redis and Postgres
(the stores `scripts/services.sh` started under $FLASHCLAIM_DATA), Debian's Chromium driven
by Playwright, axe-core run inside every screen, and screenshots of every screen at 375x667
and 1280x800 under target/browser/.

Two apps are started: `app`, as the end-to-end suites run it, and `strict_app`, with a
per-user claim rate limit and a Redis of its own that a test may stop (rate limited and
unavailable)."""

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("FLASHCLAIM_DATA", ROOT / ".data/test"))
SHOTS = ROOT / "target/browser"
AXE = ROOT / ".data/browser/node_modules/axe-core/axe.min.js"
CHROMIUM = os.environ.get("FLASHCLAIM_CHROMIUM", "/usr/bin/chromium")
HTTP_TIMEOUT = 10
# The test host, or real Spin with FLASHCLAIM_E2E_RUNTIME=spin (FLASHCLAIM_SPIN names the
# binary), as the end-to-end suites choose.
RUNTIME = "spin" if os.environ.get("FLASHCLAIM_E2E_RUNTIME", "host").startswith("spin") else "host"
SPIN = os.environ.get("FLASHCLAIM_SPIN") or shutil.which("spin") or "spin"
VIEWPORTS = {"375": {"width": 375, "height": 667}, "1280": {"width": 1280, "height": 800}}


def services():
    env = dict(
        line.split("=", 1)
        for line in (DATA / "services.env").read_text().splitlines()
        if "=" in line
    )
    return int(env["REDIS_PORT"]), int(env["PG_PORT"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso(dt):
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    """Plain HTTP to the app, with a time-out on every call, for set-up and checks."""

    def __init__(self, base):
        self.base = base

    def request(self, method, path, body=None, token=None, headers=None, raw=False):
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            if isinstance(body, (bytes, str)):
                data = body.encode() if isinstance(body, str) else body
            else:
                data = json.dumps(body).encode()
                hdrs.setdefault("content-type", "application/json")
        if token:
            hdrs["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
                status, text, rh = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, text, rh = e.code, e.read(), e.headers
        if raw:
            return status, text, rh
        return status, (json.loads(text) if text else None)

    def register(self, username, password="correct-horse-9"):
        status, body = self.request("POST", "/api/users", {"username": username, "password": password})
        assert status == 201, body
        return self.login(username, password)

    def login(self, username, password="correct-horse-9"):
        status, body = self.request("POST", "/api/sessions", {"username": username, "password": password})
        assert status == 200, body
        return body["token"]


class App:
    def __init__(self, name, redis_port, redis_db, pg_port, extra_env=None):
        self.name = name
        self.db = f"flashclaim_browser_{name}"
        self.redis_port = redis_port
        self.redis_db = redis_db
        self.pg_url = f"postgres://postgres@127.0.0.1:{pg_port}/{self.db}"
        subprocess.run(
            ["psql", f"postgres://postgres@127.0.0.1:{pg_port}/postgres", "-qtAX",
             "-c", f"DROP DATABASE IF EXISTS {self.db}",
             "-c", f"CREATE DATABASE {self.db} TEMPLATE flashclaim_template"],
            check=True, timeout=60, stdout=subprocess.DEVNULL)
        subprocess.run(["redis-cli", "-p", str(redis_port), "-n", str(redis_db), "FLUSHDB"],
                       check=True, timeout=10, stdout=subprocess.DEVNULL)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPIN_VARIABLE_")}
        self.jwt_secret = secrets.token_hex(16)
        env.update({
            "SPIN_VARIABLE_JWT_SECRET": self.jwt_secret,
            "SPIN_VARIABLE_TICKET_SECRET": secrets.token_hex(16),
            "SPIN_VARIABLE_REDIS_ADDRESS": f"redis://127.0.0.1:{redis_port}/{redis_db}",
            "SPIN_VARIABLE_REDIS_HOST": f"127.0.0.1:{redis_port}",
            "SPIN_VARIABLE_PG_ADDRESS": self.pg_url,
            "SPIN_VARIABLE_PG_HOST": f"127.0.0.1:{pg_port}",
            "SPIN_VARIABLE_CLAIM_RATE_LIMIT": "0",
        })
        env.update(extra_env or {})
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.log = open(SHOTS / f"app-{name}.log", "wb")
        if RUNTIME == "spin":
            # Real Spin with the whole manifest (the cron trigger plugin drains every second,
            # as the test host does).
            self.state_dir = SHOTS / f"spin-state-{name}"
            shutil.rmtree(self.state_dir, ignore_errors=True)
            command = [SPIN, "up", "--from", str(ROOT / "spin.wasip3.toml"), "--listen",
                       f"127.0.0.1:{self.port}", "--state-dir", str(self.state_dir)]
        else:
            command = [str(ROOT / "target/debug/spin-test-host"), "--manifest",
                       str(ROOT / "spin.wasip3.toml"), "--listen", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.api = Api(self.base)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, f"the app exited; see {self.log.name}"
            try:
                status, _ = self.api.request("GET", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the app ({RUNTIME}) did not answer within 120 s"
            time.sleep(0.2)
        self.operator = "operator"
        self.operator_password = secrets.token_hex(12)
        subprocess.run(
            [str(ROOT / "target/debug/flashclaim-operator"), self.pg_url],
            check=True, timeout=60, stdout=subprocess.DEVNULL,
            env={**os.environ, "FLASHCLAIM_ADMIN_USERNAME": self.operator,
                 "FLASHCLAIM_ADMIN_PASSWORD": self.operator_password})
        self.admin = self.api.login(self.operator, self.operator_password)

    def token(self, user, role=None):
        """A token as another issuer with the same secret would make one (HS256)."""
        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        now = int(time.time())
        claims = {"sub": user, "exp": now + 3600, "iat": now}
        if role:
            claims["role"] = role
        signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
        mac = hmac.new(self.jwt_secret.encode(), signing.encode(), hashlib.sha256).digest()
        return signing + "." + b64(mac)

    def stop(self):
        if self.process.poll() is None:
            # SIGTERM first: spin up passes it on to its trigger processes.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self.log.close()

    def create_activity(self, name="Browser test", starts_in=-60, lasts=3600, stock=10, per_user_limit=1, **more):
        now = datetime.now(timezone.utc)
        body = {"name": name, "description": "Made by the browser tests",
                "starts_at": iso(now + timedelta(seconds=starts_in)),
                "ends_at": iso(now + timedelta(seconds=starts_in + lasts)),
                "stock_total": stock, "per_user_limit": per_user_limit, **more}
        # None leaves a field out (an activity with ticket_types has no stock of its own).
        body = {k: v for k, v in body.items() if v is not None}
        status, a = self.api.request("POST", "/admin/activities", body, token=self.admin)
        assert status == 201, a
        return a

    def publish(self, activity_id):
        status, body = self.api.request("POST", f"/admin/activities/{activity_id}/publish", token=self.admin)
        assert status == 200, body
        return body

    def drain(self):
        status, body = self.api.request("POST", "/admin/drain", token=self.admin)
        assert status == 200, body
        return body


@pytest.fixture(scope="session")
def app():
    redis_port, pg_port = services()
    a = App("main", redis_port, 254, pg_port)
    yield a
    a.stop()


@pytest.fixture(scope="session")
def strict_app():
    """A per-user limit of one claim attempt a minute, on a Redis of its own."""
    _, pg_port = services()
    redis_port = free_port()
    workdir = SHOTS / "strict-redis"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while subprocess.run(["redis-cli", "-p", str(redis_port), "PING"], capture_output=True,
                         timeout=5).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline, "the private Redis did not start"
        time.sleep(0.1)
    a = App("strict", redis_port, 0, pg_port, {"SPIN_VARIABLE_CLAIM_RATE_LIMIT": "1/60000"})
    a.redis = redis
    yield a
    a.stop()
    if redis.poll() is None:
        redis.terminate()
        redis.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=60000)
        yield b
        b.close()


class Screen:
    """A browser page with what every test wants: a time-out on every wait, no CSP
    violation or script error tolerated, axe-core and screenshots at both sizes."""

    def __init__(self, context, name):
        self.context = context
        self.page = context.new_page()
        self.page.set_default_timeout(10000)
        self.name = name
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", self._console)

    def _console(self, msg):
        text = msg.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            self.errors.append(f"CSP: {text}")
        elif msg.type == "error" and "Failed to load resource" not in text:
            self.errors.append(f"console error: {text}")

    def check(self, screen):
        """axe-core in the page (no serious or critical violation), then screenshots."""
        page = self.page
        if not page.evaluate("() => typeof window.axe === 'object'"):
            page.evaluate("() => {" + AXE.read_text() + "\n}")
        result = page.evaluate("async () => { const r = await axe.run(document, {resultTypes: ['violations']});"
                               " return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))"
                               ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
                               " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})); }")
        assert result == [], f"axe on {screen}: {json.dumps(result, ensure_ascii=False, indent=1)}"
        size = page.viewport_size
        for label, viewport in VIEWPORTS.items():
            page.set_viewport_size(viewport)
            page.screenshot(path=str(SHOTS / f"{self.name}-{screen}-{label}.png"), full_page=True)
        page.set_viewport_size(size)

    def assert_clean(self):
        assert self.errors == [], "\n".join(self.errors)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.failed_call = report.failed
    return report


@pytest.fixture
def screen(browser, request):
    def make(name=None, locale="en-GB", init_script=None):
        context = browser.new_context(locale=locale, viewport=VIEWPORTS["375"], accept_downloads=True)
        if init_script:
            context.add_init_script(init_script)
        made.append(Screen(context, name or request.node.name.removeprefix("test_")))
        return made[-1]
    made = []
    yield make
    for s in made:
        if getattr(request.node, "failed_call", False):
            # What the page showed when the test failed, and what it said in its console.
            s.page.screenshot(path=str(SHOTS / f"FAILED-{s.name}.png"), full_page=True)
            print(f"{s.name}: {s.page.url}; errors: {s.errors}")
        s.context.close()
