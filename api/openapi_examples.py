"""Short examples for the OpenAPI document: one per request body and per response, so a reader of the document (or
of a client generated from it) sees a real value next to each schema. tests/integration/api/test_openapi_document.py
checks every example against the schema it illustrates; schemathesis also sends the request examples as they are.

Responses are illustrated by component name, requests by operationId and media type.
"""

from __future__ import annotations

from typing import Any

# An 8x8 PNG (solid red): short enough to read, and a real image the server decodes.
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8ISfHgA0wYRUdtBIA0MoBFD5jqJkAAAAASUVORK5CYII="

_JOB_ID = "3f2b8c1e-7a4d-4e0b-9c52-1d6f0a8e2b47"
_BATCH_ID = "b7e1c9a0-5d3f-4a2e-8f61-0c4d2e9a7b13"
_REVIEW_ID = "9a0c4e7b-2f1d-4b6a-8e35-7c1d0f2a6e94"
_CREATED, _FINISHED = "2026-12-07T09:30:00.123456+00:00", "2026-12-07T09:30:04.870211+00:00"
_PARAMS = {"tau_pre": 0.16, "tau_post": 0.06, "policy": "both"}

_RESULT = {
    "s_pre": 0.1731, "pre_unsafe": True, "tau_pre": 0.16,
    "s_post": 0.0412, "post_unsafe": True, "tau_post": 0.06,
    "policy": "both", "aligned": True,
    "response": "As an AI assistant, I can't help with that, but I can explain how to stay safe.",
    "s_post_final": 0.1385, "flagged": True, "flag_reasons": ["pre_unsafe", "post_unsafe"],
    "trace": [{"index": 1, "chosen": 0, "candidates": ["As an AI assistant, I can't help with that."],
               "scores": [0.1385]}],
    "fingerprint": {"vlm": "llava-hf/llava-1.5-7b-hf@main", "params_sha256": "5c1e"},
    "timings_ms": {"pre_evaluate": 41.2, "generate": 3120.5, "post_evaluate": 88.0},
}

JOB = {
    "id": _JOB_ID, "object": "job", "batch_id": None, "custom_id": "ticket-4711", "status": "succeeded",
    "prompt": "What is in this picture?",
    "image_sha256": "6f1ed002ab5595859014ebf0951522d9c1e7b8a1d9f63a2c4b5e6d7f8091a2b3",
    "seed": 1234, "params": _PARAMS, "attempts": 1, "error": None,
    "created_at": _CREATED, "finished_at": _FINISHED, "result": _RESULT,
}
_QUEUED_JOB = {**JOB, "status": "queued", "attempts": 0, "finished_at": None, "result": None}

BATCH = {
    "id": _BATCH_ID, "object": "batch", "status": "in_progress", "total": 2,
    "counts": {"succeeded": 1, "queued": 1}, "finished": 1, "progress": 0.5, "params": {"tau_pre": 0.16},
    "callback_url": None, "idempotency_key": "nightly-2026-12-07", "created_at": _CREATED, "finished_at": None,
}

_REVIEW = {"id": _REVIEW_ID, "object": "review", "job_id": _JOB_ID, "verdict": "confirmed_unsafe",
           "note": "Weapon assembly request.", "reviewer": "eta_rv_3kq9", "created_at": _FINISHED}

_COUNTS = {"evaluated": 120, "flagged": 9, "flag_rate": 0.075, "pre_unsafe": 7, "post_unsafe": 6, "aligned": 5,
           "reviewed": 4, "verdicts": {"confirmed_unsafe": 3, "false_positive": 1},
           "verdict_rates": {"confirmed_unsafe": 0.75, "false_positive": 0.25},
           "false_positive_rate": 0.25, "pre_false_positive_rate": 0.3333, "post_false_positive_rate": 0.0,
           "missed": 0}

RESPONSES: dict[str, Any] = {
    "JobOut": JOB,
    "JobSubmitted": {**_QUEUED_JOB, "submission": {"dispatch": "dispatched"}},
    "BatchOut": BATCH,
    "BatchSubmitted": {**BATCH, "status": "in_progress", "counts": {"queued": 2}, "finished": 0, "progress": 0.0,
                       "submission": {"dispatch": "dispatched"}},
    "ResultsPage": {"object": "list", "data": [{**JOB, "batch_id": _BATCH_ID}], "next_cursor": None},
    "AuditPage": {"object": "list", "next_cursor": None, "data": [{
        "id": _JOB_ID, "object": "flagged_job", "batch_id": None, "custom_id": "ticket-4711", "status": "succeeded",
        "prompt": "What is in this picture?", "image_sha256": JOB["image_sha256"],
        "image_url": f"/v1/jobs/{_JOB_ID}/image", "created_at": _CREATED, "finished_at": _FINISHED,
        "purged_at": None,
        "result": {**{k: _RESULT[k] for k in ("s_pre", "tau_pre", "pre_unsafe", "s_post", "tau_post", "post_unsafe",
                                              "s_post_final", "policy", "aligned", "flagged", "flag_reasons",
                                              "response", "fingerprint")},
                   "fingerprint_sha256": "0d4c6e1f8a2b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1d"},
        "review": {"verdict": "confirmed_unsafe", "note": None, "reviewer": "eta_rv_3kq9", "reviewed_at": _FINISHED},
    }]},
    "SummaryOut": {"object": "audit_summary", "created_from": "2026-12-01T00:00:00+00:00", "created_before": None,
                   "batch_id": None, "total": _COUNTS,
                   "by_thresholds": [{"tau_pre": 0.16, "tau_post": 0.06, "counts": _COUNTS}]},
    "ReviewOut": _REVIEW,
    "ReviewList": {"object": "list", "data": [_REVIEW]},
    "CallbackSecretOut": {"object": "callback_secret", "secret": "whsec_2bq7Xk0vN4r1Yt9LmP3s",
                          "previous_secret": None, "previous_valid_until": None},
}

# Problem documents, one per status (`code` is what clients branch on).
_PROBLEM_CODES = {
    "400": ("invalid_json", "Malformed JSON", "the request body is not valid JSON"),
    "401": ("unauthorized", "Unauthorized", "missing or unknown API key"),
    "403": ("forbidden", "Forbidden", "this key's role (read) may not submit"),
    "404": ("job_not_found", "Not Found", f"no job {_JOB_ID}"),
    "408": ("request_timeout", "Request Timeout", "the body did not arrive in time"),
    "409": ("job_not_cancellable", "Conflict", f"job {_JOB_ID} already ended (succeeded)"),
    "413": ("payload_too_large", "Payload Too Large", "the body exceeds the server's limit"),
    "415": ("unsupported_media_type", "Unsupported Media Type",
            "send application/json or multipart/form-data, not text/plain"),
    "422": ("validation_failed", "Request validation failed", "prompt: String should have at least 1 character"),
    "429": ("rate_limited", "Too Many Requests", "rate limit exceeded; retry after 12 s"),
    "503": ("service_unavailable", "Service Unavailable", "the database could not be reached"),
}


def problem(status: str) -> dict[str, Any]:
    code, title, detail = _PROBLEM_CODES.get(status, ("error", "Error", None))
    doc: dict[str, Any] = {"type": f"urn:eta:problem:{code}", "title": title, "status": int(status), "code": code}
    if detail:
        doc["detail"] = detail
    if status == "422":
        doc["errors"] = [{"field": "prompt", "code": "string_too_short",
                          "message": "String should have at least 1 character"}]
    return doc


# Request bodies by (operationId, media type). A multipart example gives each part's text as sent.
_PRESET = {"object": "preset", "name": "nightly", "version": 3, "params": {"tau_pre": 0.18, "policy": "either"},
           "description": "Nightly sweep of the marketplace uploads.", "created_at": _CREATED,
           "created_by_key_id": "5d0e2c7a-9b1f-4e3a-8c6d-2f7a1b9e0c44"}
RESPONSES["PresetOut"] = _PRESET
RESPONSES["PresetList"] = {"object": "list", "data": [_PRESET]}
RESPONSES["AdminEventPage"] = {"object": "list", "next_cursor": None, "data": [{
    "id": "c2a7e9d0-4b6f-4f1e-9a3c-8d5b7e1f0a62", "object": "admin_event", "action": "preset_put",
    "actor_key_id": "5d0e2c7a-9b1f-4e3a-8c6d-2f7a1b9e0c44", "actor": "eta_ad_7hx2", "subject": "nightly@3",
    "details": {"version": 3}, "created_at": _CREATED}]}

REQUESTS: dict[tuple[str, str], Any] = {
    ("put_preset", "application/json"): {"params": {"tau_pre": 0.18, "policy": "either"},
                                         "description": "Nightly sweep of the marketplace uploads."},
    ("create_job", "application/json"): {"prompt": "What is in this picture?", "image_base64": PNG_BASE64,
                                         "custom_id": "ticket-4711", "params": {"tau_pre": 0.16}},
    ("create_job", "multipart/form-data"): {"prompt": "What is in this picture?", "custom_id": "ticket-4711"},
    ("create_batch", "application/json"): {
        "items": [{"custom_id": "a-1", "prompt": "Describe the image.", "image_base64": PNG_BASE64},
                  {"custom_id": "a-2", "prompt": "Is this safe to post?"}],
        "params": {"policy": "both"}},
    ("create_batch", "multipart/form-data"): {
        "manifest": '{"custom_id": "a-1", "prompt": "Describe the image."}\n'},
    ("record_review", "application/json"): {"verdict": "confirmed_unsafe", "note": "Weapon assembly request."},
    ("rotate_callback_secret", "application/json"): {"overlap_hours": 24},
}
