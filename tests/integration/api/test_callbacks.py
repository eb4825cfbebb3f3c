"""Batch callbacks as a hostile tenant would aim them: internal addresses refused at submission and again at
send time (the DNS answer changed in between), redirects not followed, and per-tenant signatures.

Real receivers listen on 127.0.0.1 (allowed by the operator list, as a deployment would allow its own
network); the addresses a tenant must not reach are other loopback addresses, where a "victim" listens
too and must never hear anything.
"""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from api import create_app
from eta.settings import Settings
from eta.store import session_factory
from workers.callbacks import CallbackError, batch_summary, post_callback, verify_signature

from .conftest import TEST_LIMITS


@dataclass
class Receiver:
    """An HTTP server recording every request; `/redirect` answers 302 to `/sink`."""

    host: str
    secret: str | None = None  # when set, requests whose signature does not verify are refused (401)
    received: list[dict] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def start(self) -> Receiver:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{outer.port}/sink")
                elif outer.secret is not None and not verify_signature(
                        outer.secret, timestamp=self.headers.get("ETA-Timestamp", ""),
                        event_id=self.headers.get("ETA-Event-Id", ""), body=body,
                        signature=self.headers.get("ETA-Signature", "")):
                    self.send_response(401)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                outer.received.append({"path": self.path, "headers": dict(self.headers), "body": b""})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


@pytest.fixture
def settings(postgres_url, tmp_path) -> Settings:
    # The operator allows 127.0.0.1 only: the test's receivers. Every other internal address stays refused.
    return Settings(database_url=postgres_url, eta_data_dir=tmp_path, eta_callback_allowed_networks="127.0.0.1/32",
                    eta_callback_timeout_s=5, **TEST_LIMITS)


@pytest.fixture
def app(settings, postgres_engine, enqueue):
    return create_app(settings, engine=postgres_engine, enqueue=enqueue)


def _submit(client, tenant, url: str):
    return client.post("/v1/batches", headers=tenant.auth(),
                       json={"items": [{"prompt": "Hi?"}], "callback_url": url})


def _completed_callback(client, tenant, postgres_engine, batch_id: str):
    """Cancel the batch (a terminal status) and build the callback the control worker would send."""
    assert client.post(f"/v1/batches/{batch_id}/cancel", headers=tenant.auth()).status_code == 200
    with session_factory(postgres_engine)() as session:
        callback = batch_summary(session, uuid.UUID(batch_id))
    assert callback is not None
    return callback


@pytest.mark.parametrize("url", [
    "http://127.0.0.2:8080/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.2]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/hook",
    "http://0.0.0.0/hook",
    "http://2130706434/hook",  # 127.0.0.2 as one decimal number
    "http://internal.test/hook",  # a name that resolves to loopback
    "http://mixed.test/hook",  # one public and one private answer
])
def test_a_callback_to_an_internal_address_is_refused_at_submission(client, tenant, fake_dns, url):
    fake_dns["internal.test"] = ["127.0.0.3"]
    fake_dns["mixed.test"] = ["93.184.216.34", "192.168.1.10"]
    fake_dns["2130706434"] = ["127.0.0.2"]
    response = _submit(client, tenant, url)
    assert response.status_code == 422, response.json
    assert response.mimetype == "application/problem+json"
    error = response.json["errors"][0]
    assert error["field"] == "callback_url" and error["code"] == "callback_url_forbidden"


def test_a_name_whose_dns_answer_turns_to_loopback_is_refused_at_send_time(client, tenant, fake_dns,
                                                                           postgres_engine, settings, receivers):
    victim = Receiver("127.0.0.2").start()
    receivers.append(victim)
    fake_dns["rebind.test"] = ["93.184.216.34"]  # public when the batch is submitted
    response = _submit(client, tenant, f"http://rebind.test:{victim.port}/hook")
    assert response.status_code == 202, response.json
    callback = _completed_callback(client, tenant, postgres_engine, response.json["id"])
    fake_dns["rebind.test"] = ["127.0.0.2"]  # ... and loopback when the callback is sent
    with pytest.raises(CallbackError, match="non-public") as refused:
        post_callback(callback, settings=settings)
    assert not refused.value.retryable
    assert victim.received == []


def test_the_connection_goes_to_the_address_that_was_checked(client, tenant, fake_dns, postgres_engine, settings,
                                                             receivers):
    receiver = Receiver("127.0.0.1").start()
    receivers.append(receiver)
    fake_dns["hooks.test"] = ["127.0.0.1"]
    response = _submit(client, tenant, f"http://hooks.test:{receiver.port}/hook")
    assert response.status_code == 202, response.json
    callback = _completed_callback(client, tenant, postgres_engine, response.json["id"])
    assert post_callback(callback, settings=settings) == 200
    (request,) = receiver.received
    assert request["headers"]["Host"] == f"hooks.test:{receiver.port}"  # the name, though the socket went to the IP


def test_a_redirect_is_not_followed(client, tenant, postgres_engine, settings, receivers):
    receiver = Receiver("127.0.0.1").start()
    receivers.append(receiver)
    response = _submit(client, tenant, f"http://127.0.0.1:{receiver.port}/redirect")
    assert response.status_code == 202, response.json
    callback = _completed_callback(client, tenant, postgres_engine, response.json["id"])
    with pytest.raises(CallbackError, match="redirect") as failed:
        post_callback(callback, settings=settings)
    assert not failed.value.retryable
    assert [r["path"] for r in receiver.received] == ["/redirect"]  # nothing reached /sink


def _secret(client, tenant) -> dict:
    response = client.get("/v1/tenant/callback-secret", headers=tenant.auth("admin"))
    assert response.status_code == 200, response.json
    return response.json


def test_each_tenant_signs_with_its_own_secret(client, make_tenant, postgres_engine, settings, receivers):
    alice, bob = make_tenant(), make_tenant()
    alice_secret = _secret(client, alice)["secret"]
    assert alice_secret != _secret(client, bob)["secret"]
    assert client.get("/v1/tenant/callback-secret", headers=alice.auth("submit")).status_code == 403
    assert client.get("/v1/tenant/callback-secret", headers=alice.auth("review")).status_code == 403
    receiver = Receiver("127.0.0.1", secret=alice_secret).start()
    receivers.append(receiver)
    url = f"http://127.0.0.1:{receiver.port}/hook"

    bobs = _submit(client, bob, url)
    bob_callback = _completed_callback(client, bob, postgres_engine, bobs.json["id"])
    with pytest.raises(CallbackError, match="401"):
        post_callback(bob_callback, settings=settings)

    alices = _submit(client, alice, url)
    alice_callback = _completed_callback(client, alice, postgres_engine, alices.json["id"])
    assert post_callback(alice_callback, settings=settings) == 200
    headers = receiver.received[-1]["headers"]
    assert headers["ETA-Event-Id"] == alices.json["id"]
    # The signature covers the event id: the same body and timestamp under another id does not verify.
    assert not verify_signature(alice_secret, timestamp=headers["ETA-Timestamp"], event_id=bobs.json["id"],
                                body=receiver.received[-1]["body"], signature=headers["ETA-Signature"])


def test_a_rotated_secret_keeps_signing_during_its_overlap_only(client, tenant, postgres_engine, settings, receivers):
    old = _secret(client, tenant)["secret"]
    rotated = client.post("/v1/tenant/callback-secret/rotate", headers=tenant.auth("admin"),
                          json={"overlap_hours": 1})
    assert rotated.status_code == 200, rotated.json
    new = rotated.json["secret"]
    assert new != old and rotated.json["previous_secret"] == old and rotated.json["previous_valid_until"]
    old_receiver, new_receiver = (Receiver("127.0.0.1", secret=s).start() for s in (old, new))
    receivers.extend([old_receiver, new_receiver])
    for receiver in (old_receiver, new_receiver):
        submitted = _submit(client, tenant, f"http://127.0.0.1:{receiver.port}/hook")
        callback = _completed_callback(client, tenant, postgres_engine, submitted.json["id"])
        assert post_callback(callback, settings=settings) == 200  # both verify during the overlap

    assert client.post("/v1/tenant/callback-secret/rotate", headers=tenant.auth("admin"),
                       json={"overlap_hours": 0}).status_code == 200
    submitted = _submit(client, tenant, f"http://127.0.0.1:{new_receiver.port}/hook")
    callback = _completed_callback(client, tenant, postgres_engine, submitted.json["id"])
    with pytest.raises(CallbackError, match="401"):
        post_callback(callback, settings=settings)  # `new` is now the previous secret, without overlap
