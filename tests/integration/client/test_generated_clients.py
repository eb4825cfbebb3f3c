"""Clients generated from the OpenAPI document, as a team writing its pipeline in another language would make them.

- Python: openapi-python-client (tests/clients/.venv, made by scripts/setup.sh) generates a client from the document
  the live `eta serve` serves; tests/clients/use_python_client.py drives it against that server and a real worker
  (job, poll, batch, result pages, flagged jobs, a verdict), and its answers are checked against the server's own
  JSON and database here.
- TypeScript: openapi-typescript (tests/clients/node_modules, `npm ci`) generates types, and `tsc` type-checks
  tests/clients/usage.ts against them.

Neither generator may skip a schema or a response: each one's output is checked for its warnings.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from eta.store.models import Job
from tests.integration.client.conftest import LiveStack

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]

REPO = Path(__file__).resolve().parents[3]
CLIENTS = REPO / "tests" / "clients"
PYTHON_GENERATOR = CLIENTS / ".venv" / "bin" / "openapi-python-client"
NODE_BIN = CLIENTS / "node_modules" / ".bin"
SETUP = "run scripts/setup.sh (it installs the client generators under tests/clients/)"


def _served_document(stack: LiveStack) -> dict[str, Any]:
    answer = httpx.get(f"{stack.url}/v1/openapi.json", timeout=10)
    assert answer.status_code == 200
    return dict(answer.json())


def test_the_live_server_serves_the_committed_document(live_stack: LiveStack):
    assert _served_document(live_stack) == json.loads((REPO / "docs" / "openapi.json").read_text()), \
        "regenerate it: eta openapi --defaults > docs/openapi.json"


@pytest.fixture(scope="module")
def python_client(live_stack: LiveStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The Python client generated from the live server's document: (its folder's parent, its package name)."""
    assert PYTHON_GENERATOR.exists(), f"{PYTHON_GENERATOR} is missing: {SETUP}"
    root = tmp_path_factory.mktemp("python-client")
    generated = subprocess.run(
        [str(PYTHON_GENERATOR), "generate", "--url", f"{live_stack.url}/v1/openapi.json", "--meta", "none",
         "--output-path", str(root / "eta_api"), "--config", str(CLIENTS / "openapi-python-client.yaml")],
        capture_output=True, text=True, timeout=300, check=False)
    report = generated.stdout + generated.stderr
    assert generated.returncode == 0, report
    # It prints "Warning(s) encountered" and one block per schema or response it leaves out.
    assert "Warning" not in report and "WARNING" not in report and "Unable to" not in report, report
    return root, "eta_api"


def test_the_python_generator_keeps_every_schema_under_its_plain_name(python_client, live_stack: LiveStack):
    root, package = python_client
    models = {path.stem for path in (root / package / "models").glob("*.py")} - {"__init__"}
    for name in _served_document(live_stack)["components"]["schemas"]:
        snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
        assert snake in models, f"no generated model for the component {name}"
    hashed = sorted(m for m in models if re.search(r"(^|_)[0-9a-f]{7}(_|$)", m))
    assert not hashed, f"generated model names with a hash: {hashed}"
    methods = {path.stem for path in (root / package / "api").rglob("*.py")} - {"__init__"}
    assert {"create_job", "get_job", "create_batch", "get_batch", "list_batch_results", "list_flagged",
            "export_audit", "record_review"} <= methods


def test_a_pipeline_on_the_generated_python_client(python_client, live_stack: LiveStack):
    root, package = python_client
    interpreter = CLIENTS / ".venv" / "bin" / "python"
    ran = subprocess.run([str(interpreter), str(CLIENTS / "use_python_client.py"), live_stack.url,
                          live_stack.api_key, package], capture_output=True, text=True, timeout=600, check=False,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    seen = json.loads(ran.stdout.strip().splitlines()[-1])

    # Every answer was parsed into the model the document names, not left as None or raw JSON.
    assert (seen["submitted_type"], seen["job_type"], seen["result_type"], seen["form_job_type"]) == (
        "JobSubmitted", "JobOut", "JobResultOut", "JobSubmitted")
    assert (seen["batch_type"], seen["page_type"], seen["flagged_type"], seen["review_type"],
            seen["reviews_type"], seen["missing_type"]) == (
        "BatchSubmitted", "ResultsPage", "AuditPage", "ReviewOut", "ReviewList", "ProblemOut")
    assert seen["missing_code"] == "job_not_found"

    # The job as parsed is the job as served (the server's own JSON is the oracle).
    job = seen["job"]
    served = httpx.get(f"{live_stack.url}/v1/jobs/{job['id']}", timeout=10,
                       headers={"Authorization": f"Bearer {live_stack.api_key}"}).json()
    assert job["status"] == served["status"] == "succeeded"
    for key in ("id", "custom_id", "prompt", "image_sha256", "seed", "attempts"):
        assert job[key] == served[key], key
    for key in ("s_pre", "s_post", "s_post_final", "aligned", "flagged", "response", "flag_reasons"):
        assert job["result"][key] == served["result"][key], key
    assert job["result"]["s_pre"] is not None and job["result"]["aligned"] is True
    assert seen["image_bytes"] > 0

    # Pages of two hold the batch's three jobs once each, in submission order (the database says which).
    assert seen["batch_status"] == "completed"
    pages = seen["pages"]
    assert [len(page) for page in pages] == [2, 1]
    with live_stack.engine.connect() as db:
        stored = db.execute(sa.select(Job.id, Job.custom_id).where(Job.batch_id == seen["batch_id"])).all()
    listed = [(job_id, custom_id) for page in pages for job_id, custom_id, _ in page]
    assert sorted(listed) == sorted((str(i), c) for i, c in stored)
    assert [custom_id for _, custom_id in listed] == ["item-0", "item-1", "item-2"]
    assert all(status == "succeeded" for page in pages for _, _, status in page)

    # Every job of the batch was flagged (thresholds that flag everything); the verdict is on record.
    assert seen["flagged"] == sorted(job_id for job_id, _ in listed)
    review = seen["review"]
    assert review["verdict"] == "confirmed_unsafe" and review["note"] == "seen by the generated client"
    history = httpx.get(f"{live_stack.url}/v1/jobs/{review['job_id']}/reviews", timeout=10,
                        headers={"Authorization": f"Bearer {live_stack.api_key}"}).json()
    assert [r["id"] for r in history["data"]] == seen["reviews"] == [review["id"]]


def test_typescript_types_type_check_a_usage_file(live_stack: LiveStack, tmp_path: Path):
    assert (NODE_BIN / "tsc").exists() and (NODE_BIN / "openapi-typescript").exists(), f"no npm tools: {SETUP}"
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(_served_document(live_stack)))
    # A property with a default is optional to send: without this flag the generator makes it required.
    generated = subprocess.run([str(NODE_BIN / "openapi-typescript"), str(document), "-o",
                                str(tmp_path / "eta-api.d.ts"), "--default-non-nullable", "false"],
                               capture_output=True, text=True, timeout=300, check=False)
    report = generated.stdout + generated.stderr
    assert generated.returncode == 0, report
    # Its only lines on success: the banner and the file it wrote; anything else is a warning or an error.
    lines = [line for line in report.splitlines() if line.strip()]
    assert len(lines) == 2 and "openapi-typescript" in lines[0] and "eta-api.d.ts" in lines[1], report
    types = (tmp_path / "eta-api.d.ts").read_text()
    for name in _served_document(live_stack)["components"]["schemas"]:
        assert re.search(rf"^ {{8}}{name}: ", types, re.MULTILINE), f"no type for the component {name}"

    shutil.copy(CLIENTS / "usage.ts", tmp_path / "usage.ts")
    shutil.copy(CLIENTS / "tsconfig.json", tmp_path / "tsconfig.json")
    checked = subprocess.run([str(NODE_BIN / "tsc"), "-p", str(tmp_path / "tsconfig.json")], capture_output=True,
                             text=True, timeout=300, check=False, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
