"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz.hooks): fill the fields whose validity no JSON Schema
can state with valid values.

An image must decode, a manifest must be JSON Lines, a cursor must be one the server wrote, and a callback
host must resolve to a public address; the document says what it can (types, lengths, patterns, bounds),
and these four are made real here so that positive cases test everything else; schemathesis re-labels each
case by the data actually sent.
"""

from __future__ import annotations

import base64
import copy
import io
from typing import Any

import schemathesis
from PIL import Image


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()
PNG_BASE64 = base64.b64encode(PNG).decode()
# An address of the documentation range TEST-NET-1, which the fuzzed server's operator allow-list admits
# (test_openapi_contract.py): checked like any host, never routable, and no worker runs to send to it.
PUBLIC_CALLBACK = "https://192.0.2.10/eta-callback"
MANIFEST = b'{"prompt": "What is in the picture?", "custom_id": "fuzz-1"}\n'


def _fix_item(item: Any) -> None:
    if isinstance(item, dict) and item.get("image_base64") is not None:
        item["image_base64"] = PNG_BASE64


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    # Every case, positive or negative, and always a new object: schemathesis re-checks a case whose data
    # a hook replaced, so each case is labelled by what is actually sent (a negative case derived from an
    # edited positive one would otherwise keep a stale label).
    if isinstance(case.query, dict) and "cursor" in case.query:
        case.query = {k: v for k, v in case.query.items() if k != "cursor"}
    if isinstance(case.body, dict):
        case.body = _valid_body(copy.deepcopy(case.body))


def _valid_body(body: dict[str, Any]) -> dict[str, Any]:
    _fix_item(body)
    for item in body.get("items") or []:
        _fix_item(item)
    if body.get("callback_url") is not None:
        body["callback_url"] = PUBLIC_CALLBACK
    if body.get("image") is not None:
        body["image"] = PNG
    if "manifest" in body:
        body["manifest"] = MANIFEST
    return body
