"""The OpenAPI document as clients generate from it: committed in docs/openapi.json, one component per model under a
plain name, named operations, and examples that are true (they match their schemas, and the server accepts the
request examples)."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from pydantic import BaseModel

from api import create_app
from api.openapi import OPERATION_IDS, PARAMS_COMPONENT
from api.spec import ComponentNames
from eta.settings import Settings

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "docs" / "openapi.json"
REGENERATE = "eta openapi --defaults > docs/openapi.json"


@pytest.fixture
def default_document(postgres_url: str, postgres_engine, tmp_path: Path, enqueue,
                     monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The document a server at its default settings serves (no settings variable of this environment applies)."""
    for name in [n for n in os.environ if n.upper() in Settings.variables()]:
        monkeypatch.delenv(name)
    app = create_app(Settings(database_url=postgres_url, eta_data_dir=tmp_path), engine=postgres_engine,
                     enqueue=enqueue)
    answer = app.test_client().get("/v1/openapi.json")
    assert answer.status_code == 200
    return dict(answer.json)


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(dict.fromkeys([*a, *b])):
            if key not in a or key not in b:
                return f"{where}/{key}: only in the {'served' if key in a else 'committed'} document"
            if a[key] != b[key]:
                return _first_difference(a[key], b[key], f"{where}/{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{where}/{i}")
    return f"{where}: served {json.dumps(a)[:200]}, committed {json.dumps(b)[:200]}"


def test_the_committed_document_is_the_one_served(default_document):
    committed = json.loads(COMMITTED.read_text())
    assert default_document == committed, (
        f"docs/openapi.json is not what the server serves ({_first_difference(default_document, committed)}); "
        f"regenerate it: {REGENERATE}")
    # Key order too: the committed file is the one reviewers read as a diff.
    assert json.dumps(default_document) == json.dumps(committed), f"key order differs; regenerate: {REGENERATE}"


def _models_reachable(kind: Any, found: dict[str, Any]) -> None:
    from enum import Enum
    from typing import get_args

    if isinstance(kind, type) and issubclass(kind, BaseModel | Enum):
        if found.setdefault(kind.__name__, kind) is kind and issubclass(kind, BaseModel):
            for field in kind.model_fields.values():
                _models_reachable(field.annotation, found)
        return
    for argument in get_args(kind):
        _models_reachable(argument, found)


def test_one_component_per_model_under_its_class_name(default_document):
    from api import admin_events, presets, schemas
    from api.audit import schemas as audit_schemas

    schemas_ = default_document["components"]["schemas"]
    models: dict[str, Any] = {}
    for module in (schemas, audit_schemas, presets, admin_events):
        for value in vars(module).values():
            _models_reachable(value, models)
    for name in schemas_:
        assert re.fullmatch(r"[A-Z][A-Za-z]*", name), f"{name} is not a plain class name"
        assert name in models or name == PARAMS_COMPONENT, f"component {name} names no model of the API"
    assert len({json.dumps(s, sort_keys=True) for s in schemas_.values()}) == len(schemas_), "a model twice"

    # Shared, not copied: a job is the same component alone, in a page of results and inside a submission answer.
    def ref(node: dict[str, Any]) -> str | None:
        return next((a["$ref"] for a in node.get("anyOf", [node]) if "$ref" in a), None)

    assert ref(schemas_["ResultsPage"]["properties"]["data"]["items"]) == "#/components/schemas/JobOut"
    assert ref(schemas_["JobOut"]["properties"]["error"]) == "#/components/schemas/JobError"
    assert ref(schemas_["JobSubmitted"]["properties"]["error"]) == "#/components/schemas/JobError"
    for name in ("JobOut", "JobError", "JobResultOut", "BatchSubmitted", "ResultsPage", "ReviewList", "ProblemOut"):
        assert name in schemas_, name


def test_two_models_with_one_name_are_refused():
    names = ComponentNames()

    def model(module: str) -> type[BaseModel]:
        return type("JobError", (BaseModel,), {"__module__": module, "__annotations__": {"code": str}})

    class Holder(BaseModel):
        error: model("api.first")  # type: ignore[valid-type]

    assert names(Holder) == "Holder"
    with pytest.raises(TypeError, match="two API models named JobError"):
        names(model("api.second"))


def test_every_operation_has_its_chosen_id(default_document):
    operations = {(method, path): op["operationId"] for path, item in default_document["paths"].items()
                  for method, op in item.items()}
    assert operations == OPERATION_IDS, "a route without a chosen operationId: add it to api/openapi.py"
    assert len(set(operations.values())) == len(operations)
    for required in ("create_job", "get_job", "create_batch", "get_batch", "list_batch_results", "list_flagged",
                     "export_audit", "record_review"):
        assert required in operations.values()


def _examples(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
                yield f"{method} {path} request {media_type}", content
            for status, response in operation["responses"].items():
                for media_type, content in response.get("content", {}).items():
                    yield f"{method} {path} {status} {media_type}", content


def test_every_body_has_an_example_that_matches_its_schema(default_document):
    components = default_document["components"]
    checked = 0
    for where, content in _examples(default_document):
        if content["schema"].get("format") == "binary":
            continue  # image bytes: nothing to show in a JSON document
        assert "example" in content, f"{where} has no example"
        validator = jsonschema_rs.Draft202012Validator({**content["schema"], "components": components})
        errors = [error.message for error in validator.iter_errors(content["example"])]
        assert not errors, f"{where}: its example does not match its schema: {errors[:3]}"
        checked += 1
    assert checked > 100


def test_the_request_examples_are_accepted(client, tenant, default_document):
    paths = default_document["paths"]

    def example(path: str, media_type: str) -> Any:
        return paths[path]["post"]["requestBody"]["content"][media_type]["example"]

    job = client.post("/v1/jobs", headers=tenant.auth(), json=example("/v1/jobs", "application/json"))
    assert job.status_code == 202, job.json
    form = client.post("/v1/jobs", headers=tenant.auth(), data=example("/v1/jobs", "multipart/form-data"),
                       content_type="multipart/form-data")
    assert form.status_code == 202, form.json
    batch = client.post("/v1/batches", headers=tenant.auth(), json=example("/v1/batches", "application/json"))
    assert batch.status_code == 202 and batch.json["total"] == 2, batch.json
    manifest = example("/v1/batches", "multipart/form-data")["manifest"].encode()
    from_form = client.post("/v1/batches", headers=tenant.auth(),
                            data={"manifest": (io.BytesIO(manifest), "manifest.jsonl")})
    assert from_form.status_code == 202 and from_form.json["total"] == 1, from_form.json
    review = client.post(f"/v1/jobs/{job.json['id']}/review", headers=tenant.auth("review"),
                         json=example("/v1/jobs/{job_id}/review", "application/json"))
    # The body passed validation; the verdict waits for the job to be evaluated (no worker here).
    assert (review.status_code, review.json["code"]) == (409, "job_not_reviewable"), review.json
    rotated = client.post("/v1/tenant/callback-secret/rotate", headers=tenant.auth("admin"),
                          json=example("/v1/tenant/callback-secret/rotate", "application/json"))
    assert rotated.status_code == 200, rotated.json


# ------------------------------------------------------------------- the document states what the server enforces
def _schema_of(document: dict[str, Any], path: str, field: str) -> jsonschema_rs.Draft202012Validator:
    """A validator for one field of a JSON request body, as the document declares it."""
    content = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    name = content["schema"]["$ref"].rsplit("/", 1)[-1]
    declared = document["components"]["schemas"][name]["properties"][field]
    return jsonschema_rs.Draft202012Validator({**declared, "components": document["components"]})


def _decodes(value: str) -> bool:
    from api.intake import decode_base64_image

    try:
        return len(decode_base64_image(value)) > 0
    except ValueError:
        return False


def test_image_base64_admits_exactly_what_the_server_decodes(default_document):
    import itertools

    schema = _schema_of(default_document, "/v1/jobs", "image_base64")
    assert not schema.is_valid("0") and _decodes("0") is False
    samples = ["".join(chars) for n in range(7) for chars in itertools.product("A0+/= ", repeat=n)]
    samples += ["data:image/png;base64,iVBORw0KGgo=", "data:;base64,AAAA", "data:image/png,AAAA", " data:;base64,AA==",
                "AA\u3000AA", "AA\x1cAA", "AA\ufeffAA", "AA\x85AA==", "AAAA=====", "A A A A\n", "AAAA\t=", "=AAAA"]
    disagree = [s for s in samples if schema.is_valid(s) != _decodes(s)]
    assert not disagree, f"the schema and the server disagree on {disagree[:10]}"


def test_an_empty_cursor_is_the_first_page(client, tenant, default_document):
    for path, name in (("/v1/batches/{batch_id}/results", "cursor"), ("/v1/audit/flagged", "cursor")):
        [declared] = [p for p in default_document["paths"][path]["get"]["parameters"] if p["name"] == name]
        assert jsonschema_rs.Draft202012Validator(declared["schema"]).is_valid(""), f"{path}: the schema refuses ''"
    batch = client.post("/v1/batches", headers=tenant.auth(), json={"items": [{"prompt": "a"}, {"prompt": "b"}]}).json
    first = client.get(f"/v1/batches/{batch['id']}/results?limit=1", headers=tenant.auth())
    empty = client.get(f"/v1/batches/{batch['id']}/results?limit=1&cursor=", headers=tenant.auth())
    assert first.status_code == empty.status_code == 200 and empty.json == first.json
    assert first.json["next_cursor"]
    flagged = client.get("/v1/audit/flagged?cursor=", headers=tenant.auth())
    assert flagged.status_code == 200 and flagged.json["data"] == []
    garbage = client.get(f"/v1/batches/{batch['id']}/results?cursor=x", headers=tenant.auth())
    assert garbage.status_code == 422 and garbage.json["code"] == "cursor_invalid"


def _label(n: int) -> str:
    return "a" * n


@pytest.mark.parametrize(("host", "fits"), [
    (_label(63) + ".example", True),
    (_label(64) + ".example", False),  # a label longer than DNS allows (RFC 1035: 63)
    (".".join([_label(63)] * 3 + [_label(61)]), True),  # 253 characters
    (".".join([_label(63)] * 3 + [_label(62)]), False),  # 254
    ("hooks.example.", True),
    ("a..example", False),  # an empty label
    ("[2001:db8::1]", True),
    ("192.0.2.10", True),
])
def test_callback_hosts_are_held_to_dns_limits(default_document, host: str, fits: bool):
    from eta.outbound import OutboundRefused, check_target, check_url, system_resolver

    schema = _schema_of(default_document, "/v1/batches", "callback_url")
    url = f"https://{host}:8443/eta?x=1"
    assert schema.is_valid(url) is fits, url
    check_url(url)  # well-formed by the server's syntax check either way: the limit is DNS's
    if not fits:
        # The real resolver refuses it before asking any server (so this holds offline too).
        with pytest.raises(OutboundRefused, match="does not resolve"):
            from eta import outbound

            previous = outbound.set_resolver(system_resolver)
            try:
                check_target(url)
            finally:
                outbound.set_resolver(previous)


def test_eta_openapi_prints_the_served_document(monkeypatch: pytest.MonkeyPatch):
    """The one-line regeneration: `eta openapi --defaults` is the committed document whatever ETA_* says; without
    the flag it is this environment's (the operator's limits)."""
    from click.testing import CliRunner

    from eta.commands.main import main

    monkeypatch.setenv("MAX_PROMPT_CHARS", "123")  # a limit's unprefixed name counts too
    defaults = CliRunner().invoke(main, ["openapi", "--defaults"])
    assert defaults.exit_code == 0, defaults.output
    assert json.loads(defaults.stdout) == json.loads(COMMITTED.read_text())
    assert defaults.stdout.rstrip("\n") == COMMITTED.read_text().rstrip("\n"), f"not byte for byte: {REGENERATE}"

    operator = CliRunner().invoke(main, ["openapi"])
    assert operator.exit_code == 0, operator.output
    prompt = json.loads(operator.stdout)["components"]["schemas"]["JobCreate"]["properties"]["prompt"]
    assert prompt["maxLength"] == 123
    assert os.environ["MAX_PROMPT_CHARS"] == "123" and "ETA_SECRET_KEY" not in os.environ  # nothing leaked out
