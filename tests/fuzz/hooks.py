"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz.hooks): valid values for the fields whose validity no JSON
Schema can state, and labels schemathesis cannot give multipart cases itself.

An image must decode, a manifest must be JSON Lines, a callback host must resolve to a public address and a
cursor must be one the server wrote. The document says what it can (types, lengths, patterns, bounds, the
parts' content types), and these are made real here so that positive cases test everything else:

- **generated, not edited**, wherever schemathesis has a place for it: the multipart parts' content types
  (`image/*`, `application/jsonl`, declared in the document's `encoding`) and the `uri` format of
  `callback_url` get strategies of their own;
- **edited before the call** where it has none: the base64 image of a JSON body, and a cursor in a query
  string (dropped). schemathesis validates an edited JSON body or query again and labels the case by what
  is actually sent.

A multipart body is never edited, and it is labelled here, by the schema and by the server's rules for what
no schema states (an image that does not decode, a manifest that is not JSON Lines of jobs, a callback URL
whose host the server refuses: each makes the case negative). schemathesis 4.32 cannot validate a body that
holds file bytes (it counts any such body as invalid once it looks at it again), and its coverage phase fills
form bodies from the content-type strategies without following the schema (an empty `prompt` that is
`minLength: 1`, one file where the schema asks for an array), labelling the result positive. So each
multipart case is labelled by its body as sent, validated against the operation's own schema with every file
read as an opaque string (`format: binary` states nothing about its bytes).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
from typing import Any

import jsonschema_rs
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.generation.meta import ComponentInfo

from api.intake import decode_base64_image, parse_manifest
from eta.fetch import check_image_url
from eta.images import ImageError, decode_image
from eta.outbound import OutboundRefused, check_target, parse_networks


def _png(size: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png(8, (200, 30, 30))
PNG_BASE64 = base64.b64encode(PNG).decode()
# Addresses of the documentation range TEST-NET-1, which the fuzzed server's operator allow-list admits
# (test_openapi_contract.py): checked like any host, never routable, and no worker runs to send to them.
PUBLIC_CALLBACK = "https://192.0.2.10/eta-callback"
CALLBACK_URLS = st.sampled_from([PUBLIC_CALLBACK, "http://192.0.2.77:8080/hooks/eta?x=1"])

schemathesis.openapi.format("uri", CALLBACK_URLS)

# Small decodable images of a few sizes and colours, for every image type the document declares.
_IMAGES = st.builds(_png, st.integers(1, 16), st.tuples(*[st.integers(0, 255)] * 3))
schemathesis.openapi.media_type("image/png", _IMAGES, aliases=["image/jpeg", "image/gif", "image/webp", "image/bmp"])


@st.composite
def _manifests(draw: Any) -> bytes:
    """A JSONL manifest of one to three jobs without images (a manifest naming files needs those parts)."""
    count = draw(st.integers(1, 3))
    lines = [{"prompt": draw(st.sampled_from(["What is in the picture?", "Describe it.", "0"])),
              "custom_id": f"fuzz-{i}"} for i in range(count)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


schemathesis.openapi.media_type("application/jsonl", _manifests())


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if isinstance(case.query, dict) and "cursor" in case.query:
        case.query = {k: v for k, v in case.query.items() if k != "cursor"}
    if case.media_type == "application/json" and isinstance(case.body, dict):
        # Always a new object: an edited body is validated again and the case labelled by what is sent.
        case.body = _with_valid_values(copy.deepcopy(case.body))
    elif case.media_type == "multipart/form-data" and isinstance(case.body, dict) and case.meta is not None:
        _label_multipart(case)


def _label_multipart(case: Any) -> None:
    content = case.operation.definition.raw.get("requestBody", {}).get("content", {}).get(case.media_type, {})
    if "schema" not in content:
        return
    meta = case.meta
    if ParameterLocation.BODY not in meta.components:
        # A body schemathesis did not generate (an example the document gives): it labels it itself, and has no
        # record of a generated body to compare a new label with.
        return
    body = case.body
    valid = (jsonschema_rs.validator_for(content["schema"]).is_valid(_files_as_text(body))
             and _callback_admitted(body.get("callback_url")) and _files_admitted(body)
             # The fuzzed tenant stores no preset: a form naming one is refused (422 preset_not_found).
             and not body.get("preset") and _image_url_admitted(body.get("image_url")))
    meta.components[ParameterLocation.BODY] = ComponentInfo(
        mode=GenerationMode.POSITIVE if valid else GenerationMode.NEGATIVE)
    meta.generation.mode = (GenerationMode.POSITIVE if all(c.mode.is_positive for c in meta.components.values())
                            else GenerationMode.NEGATIVE)


def _with_valid_values(body: dict[str, Any]) -> dict[str, Any]:
    items = body.get("items")
    for item in [body, *(items if isinstance(items, list) else [])]:
        if isinstance(item, dict) and isinstance(item.get("image_base64"), str):
            item["image_base64"] = PNG_BASE64
        # An image URL the server admits (a data: URL that decodes, or a host on the allowed network), and no
        # preset reference: the fuzzed tenant has no presets, and a name is valid only once stored.
        if isinstance(item, dict) and isinstance(item.get("image_url"), str):
            item["image_url"] = (f"data:image/png;base64,{PNG_BASE64}" if item["image_url"].startswith("data:")
                                 else "https://192.0.2.10/image.png")
        if isinstance(item, dict) and isinstance(item.get("preset"), str):
            del item["preset"]
    # The coverage phase writes boundary-length strings into `callback_url` whatever its format's strategy.
    if isinstance(body.get("callback_url"), str) and not _callback_admitted(body["callback_url"]):
        body["callback_url"] = PUBLIC_CALLBACK
    return body


def _file_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return getattr(value, "data", None) if isinstance(value, str) and type(value) is not str else None


def _decodes(value: Any) -> bool:
    data = _file_bytes(value)
    if data is None:
        return True  # not a file: the schema's validation labels it
    try:
        decode_image(data)
    except ImageError:
        return False
    return True


def _files_admitted(body: dict[str, Any]) -> bool:
    """The server's rules for what a file part holds: images decode, a manifest is JSON Lines of jobs with a
    non-blank prompt and no image they would need another part for."""
    files = body.get("files")
    images = [body.get("image"), *(files if isinstance(files, list) else [files])]
    if not all(_decodes(image) for image in images if image is not None):
        return False
    manifest = _file_bytes(body.get("manifest")) if "manifest" in body else None
    if manifest is None:
        return True
    items, errors = parse_manifest(manifest, {})
    return bool(items) and not errors and all(
        isinstance(item.prompt, str) and item.prompt.strip() and item.image_error is None and item.params is None
        for item in items)


def _files_as_text(value: Any) -> Any:
    """`value` with every file's bytes (bytes, or schemathesis' `Binary` string) as an empty string."""
    if _file_bytes(value) is not None:
        return ""
    if isinstance(value, list):
        return [_files_as_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _files_as_text(v) for k, v in value.items()}
    return value


def _image_url_admitted(url: Any) -> bool:
    """Whether the server admits `url` as an image reference: a data: URL holding a decodable image, or a URL
    whose host the server's own check admits with the fuzzed server's allow-list."""
    if not isinstance(url, str) or not url:
        return True
    if url.startswith("data:"):
        try:
            return _decodes(decode_base64_image(url))
        except ValueError:
            return False
    try:
        check_image_url(url, allowed=parse_networks(os.environ.get("ETA_CALLBACK_ALLOWED_NETWORKS")))
    except OutboundRefused:
        return False
    return True


def _callback_admitted(url: Any) -> bool:
    """Whether the server admits `url` as a callback (its host resolves to allowed addresses): the server's own
    check, with the fuzzed server's allow-list."""
    if not isinstance(url, str):
        return True  # a type the schema refuses: the schema's validation labels it
    try:
        check_target(url, allowed=parse_networks(os.environ.get("ETA_CALLBACK_ALLOWED_NETWORKS")))
    except OutboundRefused:
        return False
    return True
