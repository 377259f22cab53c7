"""The H5 app in Chromium, as a person uses it: register, wait for the opening on the
server's clock with the phone ten minutes off, claim, see the QR, give the ticket back;
the pool code as uploaded; hostile names as text; sold out, rate limited, unavailable."""

import json
import re
import secrets
import time
from datetime import datetime

from conftest import ROOT

# The phone's clock is ten minutes fast: every Date the page makes is shifted.
SKEW_10_MIN = """
(() => {
  const skew = 10 * 60 * 1000;
  const RealDate = Date;
  class SkewedDate extends RealDate {
    constructor(...args) { if (args.length === 0) super(RealDate.now() + skew); else super(...args); }
    static now() { return RealDate.now() + skew; }
  }
  globalThis.Date = SkewedDate;
  // When the claim button first becomes pressable, on the machine's true clock
  // (performance.timeOrigin is not the page's Date).
  window.__claimOpenedAt = null;
  new MutationObserver(() => {
    const b = document.getElementById('claim-button');
    if (b && !b.disabled && !b.hidden && window.__claimOpenedAt === null) {
      window.__claimOpenedAt = performance.timeOrigin + performance.now();
    }
  }).observe(document, { subtree: true, childList: true, attributes: true });
})();
"""


def documented(path):
    paths = json.loads((ROOT / "docs/openapi.json").read_text())["paths"]
    return path in paths


def register(page, base, username, password="correct-horse-9"):
    page.goto(base + "/#/register")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Create account").click()
    page.get_by_text("Account created. You are logged in.").wait_for()


def find_in_list(page, name, within=15):
    """The list is public and edge-cacheable (a couple of seconds): press Refresh, as a
    person would, until the new activity shows."""
    link = page.get_by_role("link", name=name, exact=True)
    deadline = time.monotonic() + within
    while not link.is_visible():
        assert time.monotonic() < deadline, f"{name!r} never appeared in the list"
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_timeout(700)
    return link


def log_in(page, base, username, password="correct-horse-9", screen=None):
    page.goto(base + "/#/login")
    page.get_by_label("Username").wait_for()
    if screen:
        screen.check("login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for()


def test_claim_opens_on_the_servers_second_with_the_phone_ten_minutes_fast(app, screen):
    s = screen("claim", init_script=SKEW_10_MIN)
    page = s.page
    user = f"u{secrets.token_hex(4)}"
    # An empty form first: the errors beside the fields.
    page.goto(app.base + "/#/register")
    page.get_by_role("button", name="Create account").click()
    page.locator(".error-summary").wait_for()
    assert page.locator(".error-message:visible").count() == 2
    s.check("register-errors")
    register(page, app.base, user)
    s.check("list-empty")

    activity = app.create_activity(name="Concert: first 5 seats", starts_in=12, stock=5)
    start = datetime.fromisoformat(activity["starts_at"].replace("Z", "+00:00")).timestamp()
    app.publish(activity["id"])
    find_in_list(page, "Concert: first 5 seats").click()
    button = page.locator("#claim-button")
    button.wait_for()
    assert not page.get_by_role("link", name="Log in to claim").is_visible()
    # The phone believes the activity opened ten minutes ago; the page must not.
    assert button.is_disabled()
    assert re.search(r"Opens in 00:\d\d", button.inner_text()), button.inner_text()
    assert time.time() < start - 1
    s.check("detail-upcoming")

    page.wait_for_function("() => window.__claimOpenedAt !== null", timeout=30000, polling=50)
    opened = page.evaluate("() => window.__claimOpenedAt") / 1000
    # On the server's second: not before it (a few ms for the half round trip the page
    # estimates the offset with), and well within the second after it.
    assert start - 0.05 <= opened <= start + 1.0, f"opened {opened - start:+.3f} s from the start"
    print(f"the claim button opened {opened - start:+.3f} s from starts_at (page clock +10 min)")
    button.click()
    page.get_by_role("heading", name="Claimed!").wait_for()
    code = page.locator("#claim-result [data-testid=ticket-code]").first.inner_text()
    assert code
    assert page.locator("#claim-button").inner_text() == "You hold your limit"
    assert page.locator("#claim-button").is_disabled()
    if documented("/api/tickets/{code}/qr.svg"):
        page.locator("#claim-result img.qr").wait_for()
        assert page.locator("#claim-result img.qr").evaluate("img => img.complete && img.naturalWidth > 0")
    s.check("claimed")

    page.get_by_role("link", name="View ticket").click()
    page.locator("#verification").wait_for()
    assert page.locator("h1").inner_text() == "Ticket"
    assert page.locator("p.ticket-code").inner_text() == code
    if documented("/api/tickets/{code}/qr.svg"):
        page.locator("img.qr").wait_for()
    s.check("ticket")
    page.get_by_role("button", name="Give it back").click()
    page.get_by_text("Give this ticket back?").wait_for()
    s.check("give-back-confirm")
    page.get_by_role("button", name="Yes, give it back").click()
    page.get_by_text("Ticket given back. Thank you.").wait_for()
    assert page.locator("#ticket-status").inner_text() == "Given back"
    status, detail = app.api.request("GET", f"/api/activities/{activity['id']}")
    assert status == 200 and detail["stock_left"] == 5, detail

    app.drain()
    page.get_by_role("link", name="Back to my tickets").click()
    page.get_by_role("link", name=code).wait_for()
    assert page.get_by_text("Given back").count() == 1
    s.check("tickets")
    page.get_by_role("button", name="Log out").click()
    page.get_by_text("You have logged out.").wait_for()
    assert page.get_by_role("link", name="Log in").is_visible()
    assert page.evaluate("() => localStorage.getItem('flashclaim.h5.session')") is None
    page.goto(app.base + "/#/tickets")
    page.get_by_role("link", name="Log in to see your tickets.").wait_for()
    s.assert_clean()


def test_a_pool_code_reaches_the_user_exactly_as_uploaded(app, screen):
    activity = app.create_activity(name="Coupon: 10 off", stock=2, kind="codes")
    status, body = app.api.request("POST", f"/admin/activities/{activity['id']}/codes",
                                   "code\nSAVE10-AB12\nSAVE10-CD34\n", token=app.admin,
                                   headers={"content-type": "text/csv"})
    assert status == 201, body
    app.publish(activity["id"])
    user = f"p{secrets.token_hex(4)}"
    app.api.register(user)
    s = screen("pool")
    log_in(s.page, app.base, user, screen=s)
    s.page.goto(f"{app.base}/#/a/{activity['id']}")
    s.page.locator("#claim-button:enabled").click()
    s.page.get_by_role("heading", name="Claimed!").wait_for()
    code = s.page.locator("#claim-result [data-testid=ticket-code]").first.inner_text()
    assert code in ("SAVE10-AB12", "SAVE10-CD34"), code
    s.check("claimed")
    s.assert_clean()


def test_an_activity_named_like_markup_is_shown_as_text(app, screen):
    name = "<img src=x onerror=alert(1)>"
    app.publish(app.create_activity(name=name)["id"])
    s = screen("hostile")
    dialogs = []
    s.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    s.page.goto(app.base + "/")
    s.page.get_by_role("button", name="Refresh").wait_for()
    link = find_in_list(s.page, name)
    assert link.inner_text() == name
    s.page.locator("#lang-switch").click()
    s.page.get_by_role("heading", name="活动").wait_for()
    assert s.page.get_by_role("link", name=name).inner_text() == name
    s.check("list-zh")
    s.page.locator("#lang-switch").click()
    link.click()
    s.page.locator("h1", has_text=name).wait_for()
    assert s.page.locator("main img[src=x]").count() == 0
    assert dialogs == []
    s.check("detail")
    s.assert_clean()


def test_sold_out_rate_limited_and_unavailable_each_say_so(strict_app, screen):
    app = strict_app
    activity = app.create_activity(name="Last seat", stock=1)
    app.publish(activity["id"])
    spare = app.create_activity(name="Plenty", stock=50, per_user_limit=5)
    app.publish(spare["id"])
    user, other, third = (f"s{secrets.token_hex(4)}" for _ in range(3))
    app.api.register(user)
    app.api.register(third)

    s = screen("problems")
    page = s.page
    log_in(page, app.base, user)
    page.goto(f"{app.base}/#/a/{activity['id']}")
    page.locator("#claim-button:enabled").wait_for()
    # Right after the page refreshed the activity (it does so every 3 s), someone else takes
    # the last seat; the page still shows it, so the server's answer is what the user sees.
    with page.expect_response(lambda r: r.url.endswith(f"/api/activities/{activity['id']}"), timeout=10000):
        pass
    status, body = app.api.request("POST", f"/api/activities/{activity['id']}/claims", {},
                                   token=app.token(other))
    assert status == 201, body
    page.locator("#claim-button").click()
    page.get_by_text("Sold out: every ticket has been claimed.").wait_for()
    s.check("sold-out")

    # One attempt a minute per user and activity (this app's claim_rate_limit): the first
    # press claims, the next is refused with Retry-After, counted down on the page.
    page.goto(f"{app.base}/#/a/{spare['id']}")
    page.locator("#claim-button:enabled").click()
    page.get_by_role("heading", name="Claimed!").wait_for()
    page.locator("#claim-button:enabled").click()
    page.get_by_text(re.compile(r"Too many tries\. Try again in \d+ s\.")).wait_for()
    assert page.locator("#claim-button").is_disabled()
    s.check("rate-limited")

    # Redis goes away: the claim did not happen, and the page says to try again.
    t = screen("unavailable")
    log_in(t.page, app.base, third)
    t.page.goto(f"{app.base}/#/a/{spare['id']}")
    t.page.locator("#claim-button:enabled").wait_for()
    app.redis.terminate()
    app.redis.wait(timeout=10)
    t.page.locator("#claim-button").click()
    t.page.get_by_text(re.compile(
        r"The service is busy and your claim did not happen|We could not confirm your claim")).wait_for()
    assert t.page.locator("#claim-button").is_enabled()
    t.check("unavailable")
    s.assert_clean()


def test_a_person_chooses_a_ticket_type_and_claims_it(app, screen):
    now = time.time()
    activity = app.create_activity(name="Gala: two classes", stock=None, per_user_limit=None, ticket_types=[
        {"key": "vip", "name": "VIP box", "stock_total": 1, "per_user_limit": 1},
        {"key": "standard", "name": "Standard seat", "stock_total": 5, "per_user_limit": 1},
    ])
    app.publish(activity["id"])
    user = f"g{secrets.token_hex(4)}"
    app.api.register(user)
    s = screen("types")
    log_in(s.page, app.base, user)
    s.page.goto(f"{app.base}/#/a/{activity['id']}")
    s.page.get_by_label(re.compile("VIP box: 1 of 1 left")).check()
    s.check("choose")
    s.page.locator("#claim-button:enabled").click()
    s.page.get_by_role("heading", name="Claimed!").wait_for()
    s.page.get_by_label(re.compile("VIP box: 0 of 1 left")).wait_for()
    assert s.page.locator("#claim-button").is_disabled()
    s.page.get_by_label(re.compile("Standard seat: 5 of 5 left")).check()
    assert s.page.locator("#claim-button").is_enabled()
    href = s.page.locator("#claim-result").get_by_role("link", name="View ticket").get_attribute("href")
    ticket_id = href.removeprefix("#/t/")
    status, ticket = app.api.request("GET", f"/api/tickets/{ticket_id}", token=app.api.login(user))
    assert status == 200 and ticket["ticket_type"] == "vip", ticket
    s.check("claimed")
    s.assert_clean()
    assert time.time() - now < 60


def test_a_lost_answer_is_retried_with_the_same_key_and_never_claims_twice(app, screen):
    # Two per person, so only the reused Idempotency-Key keeps the retry from a second ticket.
    activity = app.create_activity(name="Lost answer", stock=10, per_user_limit=2)
    app.publish(activity["id"])
    user = f"l{secrets.token_hex(4)}"
    app.api.register(user)
    s = screen("lost-answer")
    page = s.page
    log_in(page, app.base, user)
    keys = []

    def drop_first_answer(route):
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            # The claim reaches the server and happens; its answer is lost on the way back,
            # as on a phone that loses its connection at the wrong moment.
            route.fetch(timeout=10000)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(f"**/api/activities/{activity['id']}/claims", drop_first_answer)
    page.goto(f"{app.base}/#/a/{activity['id']}")
    page.locator("#claim-button:enabled").click()
    page.get_by_text(re.compile("We could not confirm your claim")).wait_for()
    s.check("unconfirmed")
    page.locator("#claim-button:enabled").click()
    page.get_by_role("heading", name="Claimed!").wait_for()
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1], keys
    status, detail = app.api.request("GET", f"/api/activities/{activity['id']}", token=app.api.login(user))
    assert status == 200 and detail["my_claimed"] == 1 and detail["stock_left"] == 9, detail
    # A new press after that is a new claim with a new key.
    page.locator("#claim-button:enabled").click()
    page.locator("#claim-result").get_by_text("Claimed!").wait_for()
    page.wait_for_function("() => document.querySelector('#claim-button').textContent === 'You hold your limit'")
    assert len(keys) == 3 and keys[2] != keys[0]
    s.assert_clean()


def test_an_activity_that_needs_a_pass_gets_one_and_claims(app, screen):
    activity = app.create_activity(name="Anti-bot drop", stock=3, require_pass=True)
    app.publish(activity["id"])
    user = f"b{secrets.token_hex(4)}"
    app.api.register(user)
    s = screen("pass")
    log_in(s.page, app.base, user)
    s.page.goto(f"{app.base}/#/a/{activity['id']}")
    s.page.get_by_text("A claim pass is fetched for you first").wait_for()
    s.page.locator("#claim-button:enabled").click()
    s.page.get_by_role("heading", name="Claimed!").wait_for()
    s.check("claimed")
    # The pass the page fetched was spent by that claim.
    status, body = app.api.request("POST", f"/api/activities/{activity['id']}/passes", token=app.api.login(user))
    assert status == 200 and body["pass"] == "used", (status, body)
    s.assert_clean()
