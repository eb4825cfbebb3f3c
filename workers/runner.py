"""One stage message over a chunk of jobs: claim, compute, record. The same for every stage; what differs is
the stage's entry in `workers.stage_table` and its `StageStep` (`workers.stages`).

Every stage is safe to run twice on the same ids (a redelivered message, a sweeper re-enqueue, or two copies
at once):

1. **claim**, one short transaction: read the jobs and what earlier stages stored. A job in the stage's
   `waiting` status is moved to `running` by compare-and-set (or straight to `next`, when the step says the
   stage has nothing to do for it); a job already `running` is resumed; a job past the stage is handed on
   unchanged; a terminal job is dropped. Inputs (image bytes, earlier scores) are read here.
2. **compute**, with no database session open: jobs that can share model calls run together, `batch_size`
   per call.
3. **record**, a fresh transaction per group: the stage's columns are written and the job moves to `next`,
   in the same transaction, by compare-and-set from `running`. A job that moved meanwhile (cancelled, or
   finished by another copy of the message) writes nothing.

A per-job problem (an image that does not decode, invalid parameters, a model error on one input, a result
the database refuses) fails that job with a stable code: a group that raises is re-run, or re-recorded, job
by job. Errors that say nothing about the jobs (database unreachable, CUDA out of memory, the soft time limit)
propagate to the task, which retries or gives up for the whole message; jobs already recorded are then handed
on, not recomputed.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from eta.config import ConfigError, ETAConfig
from eta.fetch import IMAGE_FETCH_FAILED, FetchFailed, FetchPolicy, fetch_many
from eta.images import ImageError, ImageLimits, decode_image, header_pixels, split_by_pixels
from eta.settings import Settings
from eta.store import repository as repo
from eta.store.blobs import make_blob_store
from eta.store.errors import BlobNotFoundError
from eta.store.lifecycle import ACTIVE_JOB_STATUSES, JobStatus
from eta.store.models import Job
from eta.store.repository.jobs import attach_fetched_image
from workers.leases import lease_deadline
from workers.stage_types import (  # noqa: F401 - STALLED.. re-exported for the tasks and the sweeper
    IMAGE_MISSING,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    OUT_OF_MEMORY,
    STAGE_TIMEOUT,
    STALLED,
    ModelCalls,
    Stage,
    StageError,
    StageStep,
    Work,
)

if TYPE_CHECKING:
    from eta.models import Models

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 2000


@dataclass(frozen=True)
class StageContext:
    """What a stage needs from its process: sessions, models and settings."""

    sessions: sessionmaker[Session]
    models: Models
    settings: Settings
    # Who holds the message's jobs (`workers.leases`); None takes no lease (a stage run outside a worker).
    lease_owner: str | None = None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session


@dataclass
class StageProgress:
    """What a stage call has done so far, kept current so that a task interrupted mid-way knows it too."""

    stage: Stage
    # Jobs that completed this stage (or had already) and go to the next one.
    forward: list[uuid.UUID] = field(default_factory=list)
    # Jobs this call holds in the stage's running status and has neither recorded nor failed yet.
    pending: set[uuid.UUID] = field(default_factory=set)
    # Batches with a job that reached a terminal status here (whether they completed must be checked).
    touched_batches: set[uuid.UUID] = field(default_factory=set)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    model_calls: ModelCalls = field(default_factory=ModelCalls)
    # Batch of each job seen, for the failure bookkeeping.
    batch_of: dict[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)

    def ended(self, job_id: uuid.UUID) -> None:
        """`job_id` reached a terminal status: its batch may be complete."""
        batch_id = self.batch_of.get(job_id)
        if batch_id is not None:
            self.touched_batches.add(batch_id)


class _Claim(Enum):
    HOLD = "hold"  # run the stage on it
    HAND_ON = "hand_on"  # past the stage already: on to the next one
    DROP = "drop"  # ended, not there yet, or taken by another copy of the message


def parse_ids(raw_ids: Sequence[Any]) -> list[uuid.UUID]:
    """Job ids from a message, in order, duplicates dropped; an entry that is not a UUID is logged and skipped."""
    ids: list[uuid.UUID] = []
    for raw in raw_ids or ():
        try:
            job_id = raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw))
        except ValueError:
            logger.error("dropping a message entry that is not a job id: %r", raw)
            continue
        if job_id not in ids:
            ids.append(job_id)
    return ids


def error_message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_MESSAGE]


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _is_past(status: JobStatus, stage_status: JobStatus) -> bool:
    """Whether an active job in `status` has already gone through the stage that runs in `stage_status`."""
    return status in ACTIVE_JOB_STATUSES and ACTIVE_JOB_STATUSES.index(status) > ACTIVE_JOB_STATUSES.index(
        stage_status)


class StageRunner:
    """One stage message: `run` = `claim`, then per group of jobs `compute` and `record`."""

    def __init__(self, ctx: StageContext, progress: StageProgress, *, batch_size: int,
                 propagates: Callable[[BaseException], bool]) -> None:
        self.ctx = ctx
        self.progress = progress
        self.stage = progress.stage
        self.step: StageStep = self.stage.step()
        self.batch_size = batch_size
        # Errors the task handles for the whole message (never pinned on a job).
        self.propagates = propagates
        self._failures: dict[uuid.UUID, tuple[str, str]] = {}
        self._images: dict[str, bytes] = {}

    def run(self, job_ids: Sequence[uuid.UUID]) -> StageProgress:
        # Images are decoded a part at a time (`ImageLimits.worker_decode_pixels`), so a chunk of large images
        # never sits decoded all at once; a chunk of ordinary images is one part.
        budget = self.image_limits().worker_decode_pixels
        for part in split_by_pixels(self.claim(job_ids), lambda w: header_pixels(w.image_bytes), budget):
            ready = self.decode_images(part)
            for group in self.step.groups(ready, self.batch_size):
                start = time.perf_counter()
                outputs = self.compute(group)
                self.record(outputs, elapsed_ms=elapsed_ms(start))
            for item in ready:
                item.image = None
        self.report_model_calls()
        return self.progress

    # ---------------------------------------------------------------------------------------- claim
    def claim(self, job_ids: Sequence[uuid.UUID]) -> list[Work]:
        """Take the jobs waiting for (or already in) this stage, with their inputs; hand on those past it."""
        work: list[Work] = []
        passed: list[uuid.UUID] = []
        with self.ctx.transaction() as session:
            jobs = repo.get_jobs_any_tenant(session=session, job_ids=job_ids)
            found = {job.id for job in jobs}
            missing = [str(job_id) for job_id in job_ids if job_id not in found]
            if missing:
                logger.warning("jobs %s: not found (deleted?), skipped", ", ".join(missing))
            self.progress.batch_of.update((job.id, job.batch_id) for job in jobs)
            stored = (repo.get_stage_results(session=session, job_ids=[job.id for job in jobs])
                      if self.step.reads_results else {})
            # Held until recorded and handed on: a worker that dies from here on leaves leases that run out. The
            # jobs this call moves are leased by the move itself; the rest (resumed, or past the stage) next.
            lease = (None if self.ctx.lease_owner is None
                     else (self.ctx.lease_owner, lease_deadline(self.ctx.settings.workers.lease_s)))
            claims = self._claim_waiting(session, jobs, lease)
            for job in jobs:
                claim = claims.get(job.id) or self._claim_one(job)
                if claim is _Claim.HAND_ON:
                    passed.append(job.id)
                elif claim is _Claim.HOLD:
                    item = self._hold(session, job, stored.get(job.id))
                    if item is not None:
                        work.append(item)
            unleased = [job_id for job_id in [w.job_id for w in work] + passed if job_id not in claims]
            if lease is not None and unleased:
                repo.take_leases(session=session, job_ids=unleased, owner=lease[0], until=lease[1])
        self.progress.forward.extend(passed)
        self.flush_failures()
        return work

    def _claim_waiting(self, session: Session, jobs: Sequence[Job], lease: tuple[str, datetime] | None
                       ) -> dict[uuid.UUID, _Claim]:
        """Move the jobs waiting for this stage into it, or straight to `next` when the step has nothing to do
        for them: one compare-and-set statement for each of the two groups, which also leases the jobs it
        moves. A job another copy of this message took, or that was cancelled, is dropped."""
        stage = self.stage
        if stage.waiting == stage.running:
            return {}
        passing: dict[uuid.UUID, str] = {}
        entering: list[uuid.UUID] = []
        for job in jobs:
            if job.status == stage.waiting:
                reason = self.step.passes_over(job)
                if reason:
                    passing[job.id] = reason
                else:
                    entering.append(job.id)
        claims = dict.fromkeys([*passing, *entering], _Claim.DROP)
        for job_id in repo.transition_jobs(session=session, job_ids=list(passing), expected=stage.waiting,
                                           to=stage.next, lease=lease):
            logger.info("job %s: %s", job_id, passing[job_id])
            claims[job_id] = _Claim.HAND_ON
        for job_id in repo.transition_jobs(session=session, job_ids=entering, expected=stage.waiting,
                                           to=stage.running, lease=lease):
            claims[job_id] = _Claim.HOLD
        return claims

    def _claim_one(self, job: Job) -> _Claim:
        stage = self.stage
        if job.status == stage.running:
            return _Claim.HOLD
        if _is_past(job.status, stage.running):
            return _Claim.HAND_ON
        return _Claim.DROP

    def _hold(self, session: Session, job: Job, stored: Any) -> Work | None:
        """Take a job in the running status into the work list (or fail it if its inputs are bad)."""
        self.progress.pending.add(job.id)
        try:
            try:
                config = ETAConfig.from_dict(job.params)
            except (ConfigError, TypeError) as exc:
                raise StageError(INVALID_PARAMS, f"invalid parameters: {exc}") from exc
            work = Work(job_id=job.id, prompt=job.prompt, seed=job.seed, config=config,
                        params_key=json.dumps(config.to_dict(), sort_keys=True, default=str),
                        preset={"name": job.preset_name, "version": job.preset_version} if job.preset_name else None)
            if self.step.reads_image and job.image_sha256 is not None:
                work.image_bytes = self._read_image(session, job.image_sha256)
            elif self.step.reads_image and job.image_url is not None:
                work.image_url = job.image_url
            work.stored = self.step.stored_inputs(job, stored)
            return work
        except StageError as exc:
            self.fail(job.id, exc.code, str(exc))
            return None

    def _read_image(self, session: Session, sha256: str) -> bytes:
        if sha256 not in self._images:
            try:
                self._images[sha256] = make_blob_store(session=session, settings=self.ctx.settings).get(sha256)
            except BlobNotFoundError as exc:
                raise StageError(IMAGE_MISSING, f"the job's image {sha256} is not in the blob store") from exc
        return self._images[sha256]

    def image_limits(self) -> ImageLimits:
        limits = self.ctx.settings.limits
        return ImageLimits(max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels,
                           formats=frozenset(limits.image_formats))

    def decode_images(self, work: list[Work]) -> list[Work]:
        """Decode each job's image under the intake limits; a job whose image does not decode fails."""
        limits = self.image_limits()
        work = self.fetch_images(work, limits)
        ready = []
        for item in work:
            if item.image_bytes is not None:
                try:
                    item.image = decode_image(item.image_bytes, limits=limits).image
                except ImageError as exc:
                    self.fail(item.job_id, exc.code, str(exc))
                    continue
                item.image_bytes = None
            ready.append(item)
        self.flush_failures()
        return ready

    def fetch_images(self, work: list[Work], limits: ImageLimits) -> list[Work]:
        """Fetch the images given by reference (no database session open meanwhile), decode them under the
        intake limits, and store each one content-addressed as the job's image. A job whose image cannot be
        fetched fails with `image_fetch_failed` and the cause; one that does not decode, with the image's code."""
        pending = {item.job_id: item.image_url for item in work if item.image_url is not None}
        if not pending:
            return work
        settings = self.ctx.settings
        outcomes = fetch_many(pending, FetchPolicy.from_settings(settings),
                              concurrency=settings.workers.image_fetch_concurrency)
        kept: list[Work] = []
        for item in work:
            outcome = outcomes.get(item.job_id)
            if outcome is None:
                kept.append(item)
            elif isinstance(outcome, FetchFailed):
                self.fail(item.job_id, IMAGE_FETCH_FAILED, f"{item.image_url}: {outcome}")
            else:
                try:
                    decoded = decode_image(outcome, limits=limits)
                except ImageError as exc:
                    self.fail(item.job_id, exc.code, f"the image fetched from {item.image_url}: {exc}")
                    continue
                with self.ctx.transaction() as session:
                    blobs = make_blob_store(session=session, settings=settings)
                    sha256 = repo.store_image(session=session, blobs=blobs, data=outcome, mime=decoded.mime,
                                              width=decoded.width, height=decoded.height)
                    attach_fetched_image(session=session, job_id=item.job_id, sha256=sha256)
                # Without the query: a presigned URL's signature is a credential, and logs travel further.
                logger.info("job %s: image fetched from %s (%d bytes, sha256 %s)", item.job_id,
                            str(item.image_url).split("?", 1)[0], len(outcome), sha256)
                item.image, item.image_url = decoded.image, None
                kept.append(item)
        self.flush_failures()
        return kept

    # -------------------------------------------------------------------------------------- compute
    def compute(self, group: list[Work]) -> list[tuple[Work, Any]]:
        """Run the step on the group; if it raises something that does not propagate, run each job alone so
        that only the jobs that raise fail. Returns (work, output) pairs; a failing job's output is its
        exception."""
        try:
            outputs = self.step.compute(self.ctx.models, group, batch_size=self.batch_size,
                                        calls=self.progress.model_calls)
            return list(zip(group, outputs, strict=True))
        except Exception as exc:
            if self.propagates(exc):
                raise
            if len(group) == 1:
                logger.exception("job %s: stage %s raised", group[0].job_id, self.stage.name)
                return [(group[0], exc)]
            logger.warning("jobs %s: stage %s raised %s on the group; running them one by one",
                           ", ".join(str(w.job_id) for w in group), self.stage.name, error_message(exc))
        return [pair for item in group for pair in self.compute([item])]

    # --------------------------------------------------------------------------------------- record
    def record(self, pairs: list[tuple[Work, Any]], *, elapsed_ms: float) -> None:
        """Record each output and move its job to `next` (one transaction), then report the jobs that moved."""
        outputs = []
        for item, output in pairs:
            if isinstance(output, BaseException):
                self.fail(item.job_id, INTERNAL_ERROR, error_message(output))
            else:
                outputs.append((item, output))
        self._record(outputs, elapsed_ms)
        self.progress.pending.difference_update(item.job_id for item, _ in pairs)
        self.flush_failures()

    def _record(self, pairs: list[tuple[Work, Any]], elapsed_ms: float) -> None:
        if not pairs:
            return
        try:
            # The whole group in a few statements (not a few per job): the service's own cost per job.
            with self.ctx.transaction() as session:
                recorded = repo.record_stage_results(
                    session=session, stage=self.stage.name, status=self.stage.running,
                    results=[self.step.result(item, output, elapsed_ms=elapsed_ms) for item, output in pairs])
                moved_ids = repo.transition_jobs(session=session, expected=self.stage.running, to=self.stage.next,
                                                 job_ids=[item.job_id for item, _ in pairs if item.job_id in recorded])
            moved = [(item, output) for item, output in pairs if item.job_id in moved_ids]
        except sa.exc.SQLAlchemyError as exc:
            if self.propagates(exc):
                raise
            if len(pairs) == 1:
                logger.exception("job %s: the database refused the result of stage %s", pairs[0][0].job_id,
                                 self.stage.name)
                self.fail(pairs[0][0].job_id, INTERNAL_ERROR,
                          f"the result could not be stored: {error_message(exc)}")
                return
            for pair in pairs:
                self._record([pair], elapsed_ms)
            return
        for item, output in moved:
            logger.info("job %s: %s", item.job_id, self.step.describe(output))
            if self.stage.next.is_terminal:
                self.progress.ended(item.job_id)
            else:
                self.progress.forward.append(item.job_id)

    # -------------------------------------------------------------------------------------------- report
    def report_model_calls(self) -> None:
        """Add the model calls of this message to its batch's totals (`Batch.model_calls`). A chunk's jobs come
        from one batch; a message that mixes batches (a sweeper re-send) or holds jobs of none is not credited."""
        batches = set(self.progress.batch_of.values())
        if not self.progress.model_calls or len(batches) != 1:
            return
        batch_id = next(iter(batches))
        if batch_id is None:
            return
        with self.ctx.transaction() as session:
            repo.add_model_calls(session=session, batch_id=batch_id, stage=self.stage.name,
                                 calls=self.progress.model_calls)

    # -------------------------------------------------------------------------------------- failures
    def fail(self, job_id: uuid.UUID, code: str, message: str) -> None:
        self._failures[job_id] = (code, message)

    def flush_failures(self) -> None:
        failures, self._failures = self._failures, {}
        fail_jobs(self.ctx, self.progress, failures)


# ------------------------------------------------------------------------------- failures, completion
def fail_jobs(ctx: StageContext, progress: StageProgress, failures: dict[uuid.UUID, tuple[str, str]]) -> None:
    """End jobs `failed` with their code and message, if they are still in the stage's running status."""
    if not failures:
        return
    stage = progress.stage
    with ctx.transaction() as session:
        for job_id, (code, message) in failures.items():
            if repo.transition_job(session=session, job_id=job_id, expected=stage.running, to=JobStatus.FAILED,
                                   error_code=code, error_message=message[:_MAX_MESSAGE]):
                logger.warning("job %s: failed in stage %s with %s: %s", job_id, stage.name, code, message)
                progress.failed[job_id] = code
                progress.ended(job_id)
    progress.pending.difference_update(failures)


def fail_pending(ctx: StageContext, progress: StageProgress, code: str, message: str) -> None:
    """Fail the jobs this call still holds in its stage (soft time limit, out of memory at batch size 1)."""
    fail_jobs(ctx, progress, dict.fromkeys(progress.pending, (code, message)))


def complete_batches(ctx: StageContext, batch_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Mark finished batches `completed`, each in its own transaction after the jobs' commits.

    Returns the batches this call completed that have a callback URL (exactly one caller gets each).
    """
    completed: list[uuid.UUID] = []
    for batch_id in batch_ids:
        with ctx.transaction() as session:
            if not repo.complete_batch_if_finished(session=session, batch_id=batch_id):
                continue
        logger.info("batch %s: every job ended, batch completed", batch_id)
        completed.append(batch_id)
    if not completed:
        return []
    with ctx.sessions() as session:
        return repo.batches_with_callback(session=session, batch_ids=completed)
