"""The operator console in Chromium: an operator runs a campaign from the first draft to
the redeemed ticket, while the test plays the crowd."""

import concurrent.futures
import csv
import io
import re
from datetime import datetime, timedelta


def local_input(dt):
    """What a person types into a datetime-local field (the browser's local time)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S")


def test_an_operator_runs_a_campaign(app, screen):
    s = screen("console", locale="en-GB")
    page = s.page
    page.goto(app.base + "/console/")
    page.get_by_label("Username").wait_for()
    s.check("login")
    page.get_by_label("Username").fill(app.operator)
    page.get_by_label("Password").fill(app.operator_password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Activities").wait_for()

    # A draft, with the API's validation message beside the field it is about.
    page.locator("main").get_by_role("link", name="New activity").click()
    page.get_by_label("Name").fill("Coupon rush")
    page.get_by_label("Description").fill("Twelve coupons, one each")
    now = datetime.now()
    page.get_by_label("Starts at").fill(local_input(now - timedelta(minutes=1)))
    page.get_by_label("Ends at").fill(local_input(now + timedelta(hours=2)))
    page.get_by_label("Stock").fill("-1")
    page.get_by_label("Kind").select_option("codes")
    page.get_by_role("button", name="Save draft").click()
    stock_error = page.locator("[data-field=stock_total] .error-message")
    stock_error.wait_for()
    assert "stock_total" in stock_error.inner_text()
    assert page.locator(".error-summary").is_visible()
    s.check("new-activity-error")
    page.get_by_label("Stock").fill("12")
    page.get_by_role("button", name="Save draft").click()
    page.get_by_role("heading", name="Coupon rush").wait_for()
    assert page.locator("#action-message, main").get_by_text("Draft").first.is_visible()
    activity_id = int(re.search(r"#/a/(\d+)", page.url).group(1))

    # Codes from a CSV file: one bad line rejects the file and is listed; then the good file.
    good = [f"RUSH-{i:04d}" for i in range(12)]
    page.get_by_label("CSV file of codes").set_input_files(
        files=[{"name": "codes.csv", "mimeType": "text/csv",
                "buffer": ("code\n" + "\n".join(good) + "\nnot a code!\n").encode()}])
    page.get_by_role("button", name="Upload").click()
    page.locator("#codes-bad").get_by_text("not a code!").wait_for()
    s.check("codes-rejected")
    page.get_by_label("CSV file of codes").set_input_files(
        files=[{"name": "codes.csv", "mimeType": "text/csv", "buffer": ("code\n" + "\n".join(good) + "\n").encode()}])
    page.get_by_role("button", name="Upload").click()
    page.get_by_text("12 codes added.").wait_for()

    page.get_by_role("button", name="Publish").click()
    page.get_by_text("Publish this activity?").wait_for()
    s.check("publish-confirm")
    page.get_by_role("button", name="Yes").click()
    page.get_by_text("Published.", exact=True).wait_for()

    # The crowd: a burst of claims; the live view (every 2 s) rises to it.
    tokens = [app.token(f"crowd-{i}") for i in range(12)]

    def claim(token):
        return app.api.request("POST", f"/api/activities/{activity_id}/claims", {}, token=token)

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(claim, tokens))
    assert [r[0] for r in results] == [201] * 12, results
    page.wait_for_function(
        "() => document.querySelector('[data-stat=sold] .stat__value')?.textContent === '12'", timeout=15000)
    assert page.locator("[data-stat=stock_left] .stat__value").inner_text() == "0"
    page.get_by_text(re.compile(r"Sold out \(first seen at")).wait_for()
    # The chart counts claims once the drain has written them (every second on the test host).
    page.wait_for_function("() => document.querySelector('#cpm-chart')?.dataset.total === '12'", timeout=20000)
    assert page.locator("#cpm-chart canvas").count() >= 1
    s.check("live-view")

    with page.expect_download(timeout=10000) as download:
        page.get_by_role("button", name="Export claims (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert len(rows) == 12
    exported = {value for row in rows for value in row.values()}
    assert set(good) <= exported or all(any(g in v for v in exported) for g in good), rows[:2]
    page.get_by_role("button", name="Reconcile").click()
    page.get_by_text("Redis and Postgres agree.").wait_for()
    s.check("export-reconcile")

    # Redeem a ticket by the payload its QR code carries.
    ticket = results[0][1]["tickets"][0]
    status, live = app.api.request("GET", f"/api/tickets/{ticket.get('id', ticket['code'])}", token=tokens[0])
    assert status == 200, live
    page.locator("header").get_by_role("link", name="Redeem").click()
    page.get_by_label("QR payload").fill(live["qr"])
    s.check("redeem-form")
    page.get_by_role("button", name="Redeem", exact=True).click()
    page.locator("#redeem-message").get_by_text(re.compile("Redeemed ticket")).wait_for()
    page.get_by_label("QR payload").fill(live["qr"])
    page.get_by_role("button", name="Redeem", exact=True).click()
    page.locator("[data-field=qr] .error-message").wait_for()
    s.check("redeem-again")

    # The blacklist: add, see, remove.
    page.locator("header").get_by_role("link", name="Blacklist").click()
    page.get_by_label("User ID").fill("crowd-3")
    page.get_by_label("Reason (optional)").fill("bought with a bot")
    page.get_by_role("button", name="Add to blacklist").click()
    row = page.locator("#blacklist tr", has_text="crowd-3")
    row.wait_for()
    assert "bought with a bot" in row.inner_text()
    s.check("blacklist")
    row.get_by_role("button").click()
    page.get_by_text("Nobody is blacklisted.").wait_for()

    page.locator("header").get_by_role("link", name="Health").click()
    page.locator("#health").get_by_text("ok", exact=True).wait_for()
    s.check("health")

    # Every status, filterable: the published campaign is listed, not under drafts.
    page.locator("header").get_by_role("link", name="Activities").click()
    page.get_by_label("Status").select_option("published")
    page.get_by_role("button", name="Apply").click()
    page.get_by_role("link", name="Coupon rush").wait_for()
    s.check("activities")
    page.get_by_label("Status").select_option("draft")
    page.get_by_role("button", name="Apply").click()
    page.get_by_text("No activities match.").wait_for()
    page.locator("#lang-switch").click()
    page.get_by_role("heading", name="活动").wait_for()
    s.check("activities-zh")
    page.get_by_role("button", name="退出登录").click()
    page.get_by_role("heading", name="运营登录").wait_for()
    assert page.evaluate("() => localStorage.getItem('flashclaim.console.session')") is None
    s.assert_clean()


def new_draft(app, page, name, starts, ends):
    """Logs in on the console's new-activity page and fills the name and the window."""
    page.goto(app.base + "/console/#/new")
    page.get_by_label("Username").fill(app.operator)
    page.get_by_label("Password").fill(app.operator_password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="New activity").wait_for()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Starts at").fill(local_input(starts))
    page.get_by_label("Ends at").fill(local_input(ends))


def saved_draft(page, name):
    """Saves the draft and returns its id once its page shows."""
    page.get_by_role("button", name="Save draft").click()
    page.get_by_role("heading", name=name).wait_for()
    return int(re.search(r"#/a/(\d+)", page.url).group(1))


def test_a_draft_with_ticket_types_and_its_errors_beside_the_type(app, screen):
    s = screen("console-types")
    page = s.page
    now = datetime.now()
    new_draft(app, page, "Gala", now + timedelta(hours=1), now + timedelta(hours=3))
    page.get_by_role("button", name="Add a ticket type").click()
    page.get_by_role("button", name="Add a ticket type").click()
    assert not page.get_by_label("Stock", exact=True).first.is_visible() or page.locator("[data-field=stock_total]").is_hidden()
    first = page.locator("[data-type-row]").nth(0)
    second = page.locator("[data-type-row]").nth(1)
    first.get_by_label("Key").fill("vip")
    first.get_by_label("Name shown to users").fill("VIP box")
    first.get_by_label("Stock").fill("2")
    second.get_by_label("Key").fill("Standard Seat!")
    second.get_by_label("Name shown to users").fill("Standard")
    second.get_by_label("Stock").fill("20")
    page.get_by_role("button", name="Save draft").click()
    error = second.locator(".error-message").first
    error.wait_for()
    assert "ticket_types[1]" in error.inner_text()
    s.check("type-error")
    second.get_by_label("Key").fill("standard")
    activity_id = saved_draft(page, "Gala")
    status, body = app.api.request("GET", f"/admin/activities/{activity_id}", token=app.admin)
    assert status == 200, body
    assert [(t["key"], t["stock_total"]) for t in body["ticket_types"]] == [("vip", 2), ("standard", 20)]
    s.check("draft")
    page.get_by_role("button", name="Publish").click()
    page.get_by_role("button", name="Yes").click()
    page.get_by_text("Published.", exact=True).wait_for()
    # The live view by type.
    page.locator("#live-types tr[data-type=vip]").get_by_text("2 / 2").wait_for()
    page.locator("#live-types tr[data-type=standard]").get_by_text("20 / 20").wait_for()
    s.check("types-live")
    s.assert_clean()


def test_one_sale_spread_over_redis_primaries_is_refused_with_a_code_pool_and_saved_with_counters(app, screen):
    s = screen("console-buckets")
    page = s.page
    now = datetime.now()
    new_draft(app, page, "Mega drop", now - timedelta(minutes=1), now + timedelta(hours=2))
    page.get_by_label("Stock", exact=True).fill("30")
    page.get_by_label("Kind").select_option("codes")
    spread = page.get_by_label("Redis primaries to spread over")
    assert spread.input_value() == "1"
    spread.fill("3")
    page.get_by_role("button", name="Save draft").click()
    error = page.locator("[data-field=stock_buckets] .error-message")
    error.wait_for()
    assert "counter" in error.inner_text()
    s.check("buckets-error")
    page.get_by_label("Kind").select_option("counter")
    activity_id = saved_draft(page, "Mega drop")
    page.get_by_role("button", name="Publish").click()
    page.get_by_role("button", name="Yes").click()
    page.get_by_text("Published.", exact=True).wait_for()
    status, body = app.api.request("GET", f"/admin/activities/{activity_id}", token=app.admin)
    assert status == 200, body
    assert (body["stock_buckets"], body["stock_left"]) == (3, 30), body
    s.assert_clean()


def test_only_operators_get_in_and_a_refused_session_asks_to_log_in_again(app, screen):
    s = screen("console-access")
    page = s.page
    user = f"n{datetime.now().strftime('%H%M%S%f')}"
    app.api.register(user)
    page.goto(app.base + "/console/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill("correct-horse-9")
    page.get_by_role("button", name="Log in").click()
    page.locator("[data-field=username] .error-message").get_by_text("This account is not an operator.").wait_for()
    s.check("not-operator")
    # A session the API no longer accepts (here: signed with another secret).
    page.evaluate("""() => localStorage.setItem('flashclaim.console.session', JSON.stringify({
        token: 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcGVyYXRvciIsInJvbGUiOiJhZG1pbiIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnbmF0dXJl'}))""")
    page.reload()
    page.get_by_text("Please log in again.").wait_for()
    page.get_by_role("button", name="Log in").wait_for()
    s.assert_clean()
