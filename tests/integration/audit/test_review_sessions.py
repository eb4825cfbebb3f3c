"""Review-page sessions live on the server: signing out ends them for every copy of the cookie."""

from __future__ import annotations

import pytest

from .test_review_page import csrf_of, sign_in

pytestmark = pytest.mark.postgres


def _cookie(client) -> str:
    cookie = client.get_cookie("eta_review", path="/review")
    assert cookie is not None
    return cookie.value


def test_signing_out_ends_the_session_for_a_copied_cookie(app, client, tenant) -> None:
    assert sign_in(client, tenant.keys["review"]).status_code == 302
    assert client.get("/review/").status_code == 200
    stolen = _cookie(client)
    assert tenant.keys["review"] not in stolen

    thief = app.test_client()
    thief.set_cookie("eta_review", stolen, path="/review")
    assert thief.get("/review/").status_code == 200  # the same session, before sign-out

    token = csrf_of(client.get("/review/").get_data(as_text=True))
    client.post("/review/logout", data={"csrf_token": token})
    assert client.get("/review/").status_code in (302, 303)
    # The copy still verifies as a signed cookie, but its server-side session is over.
    page = thief.get("/review/")
    assert page.status_code in (302, 303) and "/review/login" in page.headers["Location"]
