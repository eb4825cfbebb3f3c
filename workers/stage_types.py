"""The types every part of a stage shares: the table's `Stage`, the `StageStep` a stage computes and records
with, and what flows between the runner and a step (`Work`, `ModelCalls`, `StageError` and its codes).

They live here, below `workers.runner` (which runs any stage), `workers.stages` (the three steps) and
`workers.stage_table` (the table), so that those three import this module and not each other.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from eta.config import ETAConfig, ModelRole
from eta.settings import Settings, StageLimits
from eta.store.lifecycle import JobStatus
from eta.store.models import Job, JobResult

if TYPE_CHECKING:
    from eta.models import Models
    from eta.store.repository import StageResult

logger = logging.getLogger(__name__)

# Failure codes a job can end with (stable: clients and dashboards match on them). Image decoding adds the
# codes of `eta.images.ImageError` (image_unreadable, image_too_many_pixels, ...).
IMAGE_MISSING = "image_missing"
INVALID_PARAMS = "invalid_params"
INTERNAL_ERROR = "internal_error"
STAGE_TIMEOUT = "stage_timeout"
OUT_OF_MEMORY = "out_of_memory"
STALLED = "stalled"


class StageError(Exception):
    """A job cannot go through this stage; `code` is what the job ends with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ModelCalls(dict[str, int]):
    """Model calls run, by kind (e.g. {"clip_image": 2}): what the cross-job batching achieved."""

    def add(self, kind: str, n: int = 1) -> None:
        self[kind] = self.get(kind, 0) + n


@dataclass
class Work:
    """One claimed job and what the compute step needs, read during the claim."""

    job_id: uuid.UUID
    prompt: str
    seed: int
    config: ETAConfig
    # The parameters as canonical JSON: jobs sharing it can share model calls.
    params_key: str
    image_bytes: bytes | None = None
    image: Image.Image | None = None
    # What the stage's step read of earlier stages' results (`StageStep.stored_inputs`).
    stored: Any = None
    # The preset the job's parameters were built on, `{"name", "version"}` (recorded in its fingerprint).
    preset: dict[str, Any] | None = None
    # An image by reference not fetched yet (the pre-evaluation stage fetches it: `StageRunner.fetch_images`).
    image_url: str | None = None


def storable(value: Any) -> Any:
    """`value` with NUL characters replaced (U+FFFD): a model can emit them, Postgres text and JSONB cannot
    hold them. The post stage then scores the answer as stored, which is the answer clients receive."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items()}
    return value


class StageStep:
    """The part of a stage that differs from the others. One instance serves one stage message."""

    # Whether the claim reads each job's image bytes (decoded before `compute`).
    reads_image: ClassVar[bool] = True
    # Whether the claim reads the jobs' result rows (what earlier stages recorded) for `stored_inputs`.
    reads_results: ClassVar[bool] = False
    # False: jobs sharing a group key go through `compute` together however many (the step batches inside).
    groups_by_batch_size: ClassVar[bool] = True

    def passes_over(self, job: Job) -> str | None:
        """Why the stage has nothing to do for a waiting job (it then moves straight to the next status),
        or None."""
        return None

    def stored_inputs(self, job: Job, stored: JobResult | None) -> Any:
        """What `compute` needs of earlier stages' results (put on `Work.stored`).

        Raises:
            StageError: the job lacks them (it fails with the error's code).
        """
        return None

    def group_key(self, work: Work) -> str:
        """Jobs with the same key can share model calls (by default: the same parameters)."""
        return work.params_key

    def groups(self, work: Sequence[Work], batch_size: int) -> Iterator[list[Work]]:
        """Jobs sharing a group key, `batch_size` at a time, in first-seen order."""
        by_key: dict[str, list[Work]] = {}
        for item in work:
            by_key.setdefault(self.group_key(item), []).append(item)
        for items in by_key.values():
            size = batch_size if self.groups_by_batch_size else len(items)
            for start in range(0, len(items), size):
                yield items[start:start + size]

    def compute(self, models: Models, group: list[Work], *, batch_size: int, calls: ModelCalls) -> list[Any]:
        """One output per job of the group, in order; model calls are counted into `calls`."""
        raise NotImplementedError

    def result(self, work: Work, output: Any, *, elapsed_ms: float) -> StageResult:
        """What the stage writes for the job (the runner records a group's results and moves the jobs on in one
        transaction, a few statements for the whole group: `repo.record_stage_results`)."""
        raise NotImplementedError

    def describe(self, output: Any) -> str:
        """The output in a few words, for the job's log line."""
        raise NotImplementedError


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: where its messages go, what a job's status says about it, what it loads."""

    # Short name: `eta worker --queues`, chain starts, log lines, the `timings` key of a result, and the key of
    # its limits in the settings (`ETA_STAGE_<NAME>_<LIMIT>`).
    name: str
    queue: str
    task: str
    waiting: JobStatus
    running: JobStatus
    next: JobStatus
    # Models its compute step uses (a worker loads those of its queues, once per process).
    roles: tuple[ModelRole, ...]
    # What it computes and records (a fresh instance per message).
    step: type[StageStep]
    # Its limits when the environment sets none: jobs per model call, soft and hard time limit of one message,
    # how long a job may sit in `running` (and in `waiting`, when that is a status of its own) before the
    # sweeper sends it again. Checked when declared; the settings may override each (`Settings.stage_limits`).
    limits: StageLimits

    def limits_in(self, settings: Settings) -> StageLimits:
        """This stage's limits under `settings` (its declared ones, with what the environment overrides)."""
        return settings.stage_limits(self.name, self.limits)

    def time_limits(self, settings: Settings) -> dict[str, int]:
        limits = self.limits_in(settings)
        return {"soft_time_limit": limits.soft_time_limit_s, "time_limit": limits.time_limit_s}
