"""The web component over HTTP, through the test host's router as Spin routes it."""

import re


def header(headers, name):
    return headers.get(name)


def test_pages_and_assets_carry_their_types_caching_and_security_headers(app):
    status, body, h = app.api.request("GET", "/", raw=True)
    assert status == 200
    assert h["content-type"] == "text/html; charset=utf-8"
    assert h["cache-control"] == "no-cache"
    csp = h["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert h["x-content-type-options"] == "nosniff"
    html = body.decode()
    assert "<script>" not in html and "onclick" not in html, "no inline script"
    assets = re.findall(r'(?:src|href)="(/assets/[0-9a-f]{12}/[^"]+)"', html)
    assert any(a.endswith("/h5.js") for a in assets), html
    for path in assets:
        status, asset, ah = app.api.request("GET", path, raw=True)
        assert status == 200, path
        assert ah["cache-control"] == "public, max-age=31536000, immutable"
        assert ah["x-content-type-options"] == "nosniff"
        assert int(ah["content-length"]) == len(asset)
    types = {p.rsplit(".", 1)[1]: app.api.request("GET", p, raw=True)[2]["content-type"] for p in assets}
    assert types["js"] == "text/javascript; charset=utf-8"
    assert types["css"] == "text/css; charset=utf-8"
    assert types["svg"] == "image/svg+xml"


def test_an_unchanged_page_answers_304_to_its_etag(app):
    status, _, h = app.api.request("GET", "/console/", raw=True)
    assert status == 200
    etag = h["etag"]
    status, body, h2 = app.api.request("GET", "/console/", headers={"if-none-match": etag}, raw=True)
    assert status == 304 and body == b""
    assert h2["etag"] == etag
    status, _, _ = app.api.request("GET", "/console/", headers={"if-none-match": '"other"'}, raw=True)
    assert status == 200


def test_unknown_assets_and_other_methods_are_problems_and_api_routes_keep_their_components(app):
    status, body = app.api.request("GET", "/assets/000000000000/h5.js")
    assert status == 404 and body["code"] == "not_found"
    status, body = app.api.request("POST", "/console/")
    assert status == 405 and body["code"] == "method_not_allowed"
    status, body, h = app.api.request("GET", "/api/activities", raw=True)
    assert status == 200 and h["content-type"].startswith("application/json")
    status, _, _ = app.api.request("GET", "/healthz", raw=True)
    assert status == 200
