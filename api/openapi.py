"""The OpenAPI document as served: spectree's document, completed with what the server enforces beyond the
pydantic models, so that a client (or a fuzzer) built from it meets no surprise.

- Every error answer is `application/problem+json` (RFC 9457) with the `ProblemOut` schema.
- Every status a route can answer is declared: 400 (malformed JSON or header), 401/403 (keys), 404,
  413/415 (bodies), 422 (validation), 429 (rate limits and quotas, with `Retry-After`).
- The operator's limits (prompt length, items per batch, each ETA parameter's bounds) and the text rule
  (no NUL; prompts not blank) are in the schemas, read from this process's settings; so are the syntax of a
  base64 image and of a callback URL (DNS limits on its host).

For generated clients (docs/operations.md, "Generating a client"): one component per model under its class name
(api/spec.py names them), only the components an operation reaches, an operationId per route chosen for the reader
(`OPERATION_IDS`) and an example on every request and response body (api/openapi_examples.py).
`eta openapi --defaults > docs/openapi.json` regenerates the committed document.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

from api import openapi_examples as examples
from api.intake import PARAM_LIMITS
from api.text import NO_NUL_PATTERN, NOT_BLANK_PATTERN
from eta.config import MAX_SEED, POLICIES, REAL_DOMAINS, ETAConfig
from eta.outbound import MAX_URL_CHARS
from eta.settings import Settings
from eta.store.repository.presets import PRESET_NAME, PRESET_REFERENCE_PATTERN

PROBLEM_MIMETYPE = "application/problem+json"
_ERROR_TITLES = {
    "400": "Bad Request: malformed JSON, an invalid header or query string",
    "401": "Unauthorized: missing, unknown or revoked API key",
    "403": "Forbidden: the key's role does not allow this",
    "404": "Not Found (another tenant's resources are not found either)",
    "408": "Request Timeout: the body did not arrive within ETA_BODY_TIMEOUT_S",
    "409": "Conflict",
    "413": "Payload Too Large",
    "415": "Unsupported Media Type",
    "422": "Validation failed: the problem's `errors` name each bad field",
    "429": "Too Many Requests: a rate limit or the tenant's job quota; retry after `Retry-After` seconds",
    "503": "Service Unavailable: the database could not be reached; retry after `Retry-After` seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def params_schema(settings: Settings) -> dict[str, Any]:
    """JSON Schema of the ETA parameters a client may set, with the operator's bounds."""
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(ETAConfig):
        name = f.name
        if name in PARAM_LIMITS:
            limit = getattr(settings.limits, PARAM_LIMITS[name])
            properties[name] = {"type": "integer", "minimum": 1, "maximum": limit}
        elif name == "seed":
            properties[name] = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED}
        elif name == "policy":
            properties[name] = {"type": "string", "enum": list(POLICIES)}
        elif name in REAL_DOMAINS:
            least, greatest = REAL_DOMAINS[name]
            properties[name] = {"type": "number", "minimum": least, "maximum": greatest}
        elif f.type in ("float", float):
            properties[name] = {"type": "number"}
        elif f.type in ("str", str):
            properties[name] = {"type": "string", "minLength": 1, "maxLength": settings.limits.max_param_chars,
                                "pattern": NOT_BLANK_PATTERN}
        else:  # pragma: no cover - a new parameter type must be described here
            properties[name] = {}
        default = f.default
        if default is not dataclasses.MISSING and name != "seed":
            properties[name]["default"] = default
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "description": "ETA parameters (item params override batch params); bounds are this server's limits."}


def _prompt(settings: Settings, base: dict[str, Any]) -> dict[str, Any]:
    return {**base, "type": "string", "minLength": 1, "maxLength": settings.limits.max_prompt_chars,
            "pattern": NOT_BLANK_PATTERN}


def _custom_id(base: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "string", "maxLength": 255, "pattern": NO_NUL_PATTERN}, {"type": "null"}],
            "description": base.get("description", "Your own id, echoed back.")}


# What `eta.outbound.check_url` admits by syntax: an absolute http(s) URL of printable ASCII without spaces, without
# credentials, with a port from 1 to 65535 if any; and a host that DNS can hold (RFC 1035: labels of 1 to 63
# characters, at most 253 in all) or an IP literal in brackets. Whether the host resolves to a public address is
# checked at submission and again at send time; no schema can say it.
_HOST_CHAR = r'[!"$-,0-9;->A-Z\\^-~-]'  # printable ASCII but . / : ? # @ [ ]
_DNS_NAME = rf"(?![^/?#:]{{254}}){_HOST_CHAR}{{1,63}}(?:\.{_HOST_CHAR}{{1,63}})*\.?"
_PORT = r"0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
CALLBACK_URL_PATTERN = (rf"^[hH][tT][tT][pP][sS]?://(?:{_DNS_NAME}|\[[0-9A-Za-z:.%~_-]+\])(?::(?:{_PORT})?)?"
                        r"(?:[/?#][!-~]*)?$")
_CALLBACK_URL = {"type": "string", "format": "uri", "minLength": len("http://x"), "maxLength": MAX_URL_CHARS,
                 "pattern": CALLBACK_URL_PATTERN,
                 "description": "POSTed a signed summary when the batch ends: an http(s) URL whose host resolves to "
                                "public addresses only (422 callback_url_forbidden otherwise)."}


# An image by reference: an http(s) URL admitted like a callback URL (its host is checked at submission and again
# when the image is fetched), or a data: URL holding the image in base64.
_IMAGE_URL: dict[str, list[dict[str, Any]]] = {"anyOf": [
    {"type": "string", "format": "uri", "minLength": len("http://x"), "maxLength": MAX_URL_CHARS,
     "pattern": CALLBACK_URL_PATTERN},
    {"type": "string", "pattern": "^data:[!-~]*;base64,", "contentEncoding": "base64"},
    {"type": "null"}]}
_PRESET: dict[str, list[dict[str, Any]]] = {"anyOf": [
    {"type": "string", "pattern": PRESET_REFERENCE_PATTERN, "maxLength": 75}, {"type": "null"}]}
# What `api.intake.decode_base64_image` decodes to at least one byte: base64 with its padding (a complete final
# group may be followed by more `=`), white space anywhere (what `str.split()` splits on), optionally behind a
# `data:...;base64,` prefix. Whether the bytes are an image the server reads, no schema can say.
_SPACE = r"[\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
_B64 = rf"[A-Za-z0-9+/]{_SPACE}"
BASE64_PATTERN = (rf"^(?:data:[^,]*;base64,)?{_SPACE}(?:(?:(?:{_B64}){{4}})+(?:={_SPACE})*"
                  rf"|(?:(?:{_B64}){{4}})*(?:(?:{_B64}){{2}}={_SPACE}={_SPACE}|(?:{_B64}){{3}}={_SPACE}))$")


def _part_types(settings: Settings) -> dict[str, str]:
    """The content types of the multipart parts that are files (OpenAPI `encoding`): the image formats this
    server accepts. It reads an image by its bytes, whatever type the part declares, and refuses one it cannot
    decode (422)."""
    images = ", ".join(f"image/{name.lower()}" for name in sorted(settings.limits.image_formats))
    return {"image": images, "files": images, "manifest": "application/jsonl"}


# The one component that is not a pydantic model: the parameters a client may set (a JSON body refers to it; a form
# part, which is checked as sent, carries a copy).
PARAMS_COMPONENT = "ETAParams"


def _complete_request_schemas(doc: dict[str, Any], settings: Settings) -> None:
    params = params_schema(settings)
    schemas = doc["components"]["schemas"]
    for kind, schema in schemas.items():
        props = schema.get("properties", {})
        params_here = params if kind.endswith("Form") else {"$ref": f"#/components/schemas/{PARAMS_COMPONENT}"}
        if kind in ("JobCreate", "JobCreateForm", "BatchItem"):
            props["prompt"] = _prompt(settings, {"description": props.get("prompt", {}).get("description", "")})
            props["custom_id"] = _custom_id(props.get("custom_id", {}))
            props["params"] = {"anyOf": [params_here, {"type": "null"}]}
        if kind in ("BatchCreate", "BatchCreateForm"):
            props["params"] = {"anyOf": [params_here, {"type": "null"}]}
        if kind == "PresetPut":
            props["params"] = params_here
        if kind.endswith("Form"):
            # A form part is text or a file, never JSON null: leave a part out instead.
            for name, prop in props.items():
                alternatives = [a for a in prop.get("anyOf", []) if a.get("type") != "null"]
                if len(alternatives) == 1:
                    props[name] = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")},
                                   **alternatives[0]}
            if kind == "JobCreateForm":
                props["image"] = {"type": "string", "format": "binary", "description": "The image file."}
        if kind == "BatchCreateForm":
            schema["required"] = ["manifest"]
            props["callback_url"] = dict(_CALLBACK_URL)
        if kind == "BatchCreate":
            props["callback_url"] = {"anyOf": [{k: v for k, v in _CALLBACK_URL.items() if k != "description"},
                                               {"type": "null"}], "description": _CALLBACK_URL["description"]}
        if kind == "BatchCreate":
            props["items"]["maxItems"] = settings.limits.max_batch_items
        if kind in ("JobCreate", "JobCreateForm", "BatchItem", "BatchCreate", "BatchCreateForm"):
            image_field = "image" if kind == "JobCreateForm" else "image_base64"
            if "image_url" in props and image_field in props and not kind.endswith("Form"):
                # One image per item: given inline and by reference, it is refused (422 image_conflict). Not stated
                # on the forms: a `not` over a file part is more than schema tools handle (schemathesis 4.32's
                # coverage phase fails on it), and docs/operations.md lists the refusal.
                schema["not"] = {"required": [image_field, "image_url"], "properties": {
                    image_field: {"not": {"type": "null"}}, "image_url": {"not": {"type": "null"}}}}
            for name, base in (("image_url", _IMAGE_URL), ("preset", _PRESET)):
                if name in props:
                    alternatives = [a for a in copy.deepcopy(base)["anyOf"]
                                    if not (kind.endswith("Form") and a.get("type") == "null")]
                    props[name] = {"anyOf": alternatives, "description": props[name].get("description", "")}
        if kind in ("JobCreate", "BatchItem") and "image_base64" in props:
            props["image_base64"] = {"anyOf": [{"type": "string", "minLength": 4, "contentEncoding": "base64",
                                                "pattern": BASE64_PATTERN}, {"type": "null"}],
                                     "description": "The image, base64 (a data: URL is accepted)."}
    schemas[PARAMS_COMPONENT] = params


def _body_optional_without_required_fields(doc: dict[str, Any], body: dict[str, Any]) -> None:
    # A body whose every field has a default may be left out (spectree marks every body required).
    schemas = [doc["components"]["schemas"].get(c.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1])
               for c in body.get("content", {}).values()]
    if schemas and all(s is not None and not s.get("required") for s in schemas):
        body["required"] = False


def _inline_body_schemas(doc: dict[str, Any], body: dict[str, Any], settings: Settings) -> None:
    # A JSON body stays a reference: a generated client then names its model after the component (`JobCreate`).
    # A form is inlined: tools that check a multipart body as sent (tests/fuzz/hooks.py) read it without a
    # reference to follow.
    for media_type, content in body.get("content", {}).items():
        ref = content.get("schema", {}).get("$ref", "")
        if ref and media_type != "application/json":
            content["schema"] = copy.deepcopy(doc["components"]["schemas"][ref.rsplit("/", 1)[-1]])
        if media_type == "multipart/form-data":
            parts = content.get("schema", {}).get("properties", {})
            content["encoding"] = {name: {"contentType": kind} for name, kind in _part_types(settings).items()
                                   if name in parts}


def _complete_responses(doc: dict[str, Any], settings: Settings) -> None:
    problem_content = {PROBLEM_MIMETYPE: {"schema": {"$ref": "#/components/schemas/ProblemOut"}}}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            statuses = {"400", "401", "403", "429", "503"}
            if "{" in path:
                statuses.add("404")
            if operation.get("requestBody"):
                statuses.update({"408", "413", "415", "422"})
                _body_optional_without_required_fields(doc, operation["requestBody"])
                _inline_body_schemas(doc, operation["requestBody"], settings)
            if operation.get("parameters") or operation.get("requestBody"):
                statuses.add("422")
            for status in statuses:
                responses.setdefault(status, {})
            if method == "get" and operation.get("parameters"):
                # gunicorn's own answer to a request line over its limit (a problem document: api.server_errors).
                responses["414"] = {"description": "URI Too Long: the request line exceeds the server's limit"}
            for status, response in responses.items():
                if status[0] in "45":
                    response["description"] = _ERROR_TITLES.get(status, response.get("description", "Error"))
                    response["content"] = dict(problem_content)
                if status in ("429", "503"):
                    response["headers"] = dict(_RETRY_AFTER)
            operation["responses"] = dict(sorted(responses.items()))


# operationIds: what a generated client names its methods (`client.create_job(...)`), so chosen here for the reader
# rather than derived from paths. A route missing here keeps spectree's id and fails the document's test.
OPERATION_IDS = {
    ("post", "/v1/jobs"): "create_job",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/image"): "get_job_image",
    ("post", "/v1/jobs/{job_id}/review"): "record_review",
    ("get", "/v1/jobs/{job_id}/reviews"): "list_reviews",
    ("post", "/v1/batches"): "create_batch",
    ("get", "/v1/batches/{batch_id}"): "get_batch",
    ("get", "/v1/batches/{batch_id}/results"): "list_batch_results",
    ("post", "/v1/batches/{batch_id}/cancel"): "cancel_batch",
    ("get", "/v1/audit/flagged"): "list_flagged",
    ("get", "/v1/audit/export"): "export_audit",
    ("get", "/v1/audit/summary"): "get_audit_summary",
    ("get", "/v1/tenant/callback-secret"): "get_callback_secret",
    ("post", "/v1/tenant/callback-secret/rotate"): "rotate_callback_secret",
    ("get", "/v1/presets"): "list_presets",
    ("get", "/v1/presets/{name}"): "get_preset",
    ("put", "/v1/presets/{name}"): "put_preset",
    ("get", "/v1/admin/events"): "list_admin_events",
}


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield method, path, operation


def _name_operations(doc: dict[str, Any]) -> None:
    for method, path, operation in _operations(doc):
        operation["operationId"] = OPERATION_IDS.get((method, path), operation.get("operationId"))


def _declare_file_answers(doc: dict[str, Any], settings: Settings) -> None:
    """The two answers that are not JSON (spectree documents a 200 without a body for them)."""
    images = {f"image/{name.lower()}" for name in settings.limits.image_formats} | {"image/jpeg"}
    bodies = {
        "export_audit": {"application/x-ndjson": {"schema": {"type": "string"},
                                                  "example": '{"id": "3f2b8c1e-...", "object": "flagged_job"}\n'},
                         "text/csv": {"schema": {"type": "string"}, "example": "id,batch_id,custom_id,...\n"}},
        "get_job_image": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in sorted(images)},
    }
    for _, _, operation in _operations(doc):
        body = bodies.get(operation["operationId"])
        if body is not None:
            operation["responses"]["200"]["content"] = body


def _add_examples(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for _, _, operation in _operations(doc):
        for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
            example = examples.REQUESTS.get((operation["operationId"], media_type))
            if example is not None:
                content["example"] = copy.deepcopy(example)
        for status, response in operation["responses"].items():
            for media_type, content in response.get("content", {}).items():
                name = content.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
                if media_type == PROBLEM_MIMETYPE:
                    content["example"] = examples.problem(status)
                elif name in examples.RESPONSES and name in schemas:
                    content["example"] = copy.deepcopy(examples.RESPONSES[name])


def _referenced(node: Any) -> set[str]:
    prefix = "#/components/schemas/"
    if isinstance(node, dict):
        ref = node.get("$ref")
        found = {ref[len(prefix):]} if isinstance(ref, str) and ref.startswith(prefix) else set()
        return found.union(*(_referenced(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_referenced(v) for v in node))
    return set()


def _drop_unused_components(doc: dict[str, Any]) -> None:
    """Keep the components an operation reaches. spectree lists every model it saw, among them its own
    validation error (every 422 here is a problem document) and the request bodies inlined above."""
    schemas = doc["components"]["schemas"]
    used: set[str] = set()
    frontier = _referenced(doc["paths"])
    while frontier - used:
        used |= frontier
        frontier = _referenced([schemas[name] for name in frontier if name in schemas])
    doc["components"]["schemas"] = {name: schema for name, schema in schemas.items() if name in used}


def _complete_path_parameters(doc: dict[str, Any]) -> None:
    # A preset's name in a path follows the rule for names (422 preset_name_invalid otherwise).
    for path, item in doc["paths"].items():
        for operation in item.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if path.startswith("/v1/presets/") and parameter.get("in") == "path" and parameter["name"] == "name":
                    parameter["schema"] = {"type": "string", "pattern": PRESET_NAME.pattern}


def document(base: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The served document: `base` (spectree's) completed for this server's settings."""
    doc = copy.deepcopy(base)
    _name_operations(doc)
    _complete_request_schemas(doc, settings)
    _complete_path_parameters(doc)
    _complete_responses(doc, settings)
    _declare_file_answers(doc, settings)
    _drop_unused_components(doc)
    _add_examples(doc)
    return doc



