"""Request and response schemas. The same pydantic models validate requests and generate the OpenAPI
document (through spectree), so the document cannot drift from what the API accepts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import core_schema
from spectree.model_adapter.pydantic_adapter import BaseFile

from eta.store.lifecycle import BatchStatus, JobStatus

# The statuses as the schemas name them: the store's enums themselves (their values are the API's).
JobStatusName = JobStatus
BatchStatusName = BatchStatus


class UploadedFiles:
    """One or more uploaded files under one form field. Validated as-is: a single werkzeug FileStorage is
    iterable (by lines), so a plain `list[...]` would consume it while validating."""

    @classmethod
    def __get_pydantic_json_schema__(cls, _core_schema: Any, _handler: Any) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "string", "format": "binary"}}

    @classmethod
    def __get_pydantic_core_schema__(cls, _source_type: Any, _handler: Any) -> Any:
        return core_schema.no_info_plain_validator_function(lambda value: value)


class FormText:
    """A text field of a multipart form, accepted as sent and checked by the view (see `JobCreateForm`)."""

    @classmethod
    def __get_pydantic_json_schema__(cls, _core_schema: Any, _handler: Any) -> dict[str, Any]:
        return {"type": "string"}

    @classmethod
    def __get_pydantic_core_schema__(cls, _source_type: Any, _handler: Any) -> Any:
        return core_schema.no_info_plain_validator_function(lambda value: value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------ requests
IMAGE_URL_DOC = ("The image by reference: an https URL (plain http only to networks the operator allows) fetched "
                 "by the service, or a data: URL (like image_base64). A host resolving to a loopback, private, "
                 "link-local or metadata address is refused (422 image_url_forbidden).")
PRESET_DOC = ("A stored preset, `name` (its latest version) or `name@version`: its parameters under the "
              "request's own params.")
class JobCreate(_Strict):
    """One job as JSON. `params` override the ETA defaults (tau_pre, tau_post, policy, seed, ...)."""

    prompt: str = Field(description="The user's question to the VLM.")
    image_base64: str | None = Field(default=None, description="The image, base64 (a data: URL is accepted).")
    params: dict[str, Any] | None = Field(default=None, description="ETA parameters for this job.")
    custom_id: str | None = Field(default=None, max_length=255, description="Your own id, echoed back.")
    image_url: str | None = Field(default=None, description=IMAGE_URL_DOC)
    preset: str | None = Field(default=None, description=PRESET_DOC)


class JobCreateForm(_Strict):
    """One job as multipart/form-data.

    Form fields are typed permissively on purpose: the intake validation checks them and names every
    problem, and a form whose validation failed here would carry file objects into the error report.
    """

    prompt: FormText = Field(description="The user's question to the VLM (required).")
    image: BaseFile | None = None
    params: FormText | None = Field(default=None, description="ETA parameters as a JSON object.")
    custom_id: FormText | None = None
    image_url: FormText | None = Field(default=None, description=IMAGE_URL_DOC)
    preset: FormText | None = Field(default=None, description=PRESET_DOC)


class BatchItem(_Strict):
    custom_id: str | None = Field(default=None, max_length=255)
    prompt: str
    image_base64: str | None = None
    params: dict[str, Any] | None = None
    image_url: str | None = Field(default=None, description=IMAGE_URL_DOC)
    preset: str | None = Field(default=None, description=PRESET_DOC)


class BatchCreate(_Strict):
    """A batch as JSON. Validation is all-or-nothing: one bad item rejects the whole batch."""

    items: list[BatchItem] = Field(min_length=1)
    params: dict[str, Any] | None = Field(default=None, description="ETA parameters for every item.")
    callback_url: str | None = Field(default=None, description="POSTed a signed summary when the batch ends.")
    preset: str | None = Field(default=None, description="The preset of every item that names none. " + PRESET_DOC)


class BatchCreateForm(_Strict):
    """A batch as multipart/form-data: a JSONL manifest plus the image files it names.

    Each manifest line is `{"custom_id", "prompt", "image": <uploaded file name> | null, "params"}`.
    """

    manifest: BaseFile | None = Field(default=None, description="The JSONL manifest (required).")
    files: UploadedFiles | None = Field(default=None, description="Images, matched to `image` by file name.")
    params: FormText | None = Field(default=None, description="ETA parameters for every item, as a JSON object.")
    callback_url: FormText | None = None
    preset: FormText | None = Field(default=None, description="The preset of every item that names none.")


class RotateSecret(_Strict):
    overlap_hours: float = Field(default=24.0, ge=0, le=720, strict=True,
                                 description="How long the previous secret keeps signing alongside the new one.")


class CallbackSecretOut(BaseModel):
    object: Literal["callback_secret"] = "callback_secret"
    secret: str = Field(description="HMAC-SHA256 key of this tenant's callbacks.")
    previous_secret: str | None = Field(description="Still signing until previous_valid_until (after a rotation).")
    previous_valid_until: datetime | None


# A page's cursor: `next_cursor` of the previous page. Empty (`cursor=`, as a client that fills a URL template
# sends for the first page) means none, as the document says by admitting it.
Cursor = Annotated[str | None, BeforeValidator(lambda value: value or None),
                   Field(description="`next_cursor` of the previous page; left out or empty: the first page.")]


class PageQuery(_Strict):
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: Cursor = None


# ----------------------------------------------------------------------------------------- responses
class PresetRef(BaseModel):
    name: str
    version: int


class JobError(BaseModel):
    code: str
    message: str | None


class JobResultOut(BaseModel):
    s_pre: float | None = Field(description="CLIP cosine of the image and the safety prompt (null: no image).")
    pre_unsafe: bool | None
    tau_pre: float | None
    s_post: float | None = Field(description="Reward of the vanilla answer.")
    post_unsafe: bool | None
    tau_post: float | None
    policy: str | None
    aligned: bool | None
    response: str | None = Field(description="The final answer.")
    s_post_final: float | None = Field(description="Reward of the final answer.")
    flagged: bool
    flag_reasons: list[str] | None
    trace: list[dict[str, Any]] | None = Field(description="Per-sentence alignment: candidates, scores, choice.")
    fingerprint: dict[str, Any] | None
    timings_ms: dict[str, Any]
    vanilla_response: str | None = Field(default=None, description="Reviewers and admins only.")
    preset: PresetRef | None = Field(default=None, description="The preset the job ran with (name and version).")


class JobOut(BaseModel):
    id: uuid.UUID
    object: Literal["job"] = "job"
    batch_id: uuid.UUID | None
    custom_id: str | None
    status: JobStatusName
    prompt: str
    image_sha256: str | None
    seed: int
    params: dict[str, Any]
    attempts: int
    image_url: str | None = Field(default=None, description="Where the image was fetched from (by reference).")
    preset: PresetRef | None = Field(default=None, description="The preset the parameters were built on.")
    error: JobError | None
    created_at: datetime
    finished_at: datetime | None
    result: JobResultOut | None


class BatchOut(BaseModel):
    id: uuid.UUID
    object: Literal["batch"] = "batch"
    status: BatchStatusName
    total: int
    counts: dict[str, int] = Field(description="Jobs per status.")
    finished: int = Field(description="Jobs in a terminal status.")
    progress: float = Field(description="finished / total.")
    params: dict[str, Any]
    callback_url: str | None
    idempotency_key: str | None
    created_at: datetime
    finished_at: datetime | None


class SubmitInfo(BaseModel):
    dispatch: Literal["dispatched", "deferred", "replayed"] = Field(
        description="deferred: the broker was unreachable; the jobs are stored and the sweeper will enqueue them.")


class JobSubmitted(JobOut):
    submission: SubmitInfo


class BatchSubmitted(BatchOut):
    submission: SubmitInfo


class ResultsPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    next_cursor: str | None


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
