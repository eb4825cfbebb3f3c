"""The three stages over a chunk of jobs: read from the store, compute through `eta.safety.pipeline`, save.

Every stage follows the same shape, and is safe to run twice on the same ids (a redelivered message, a
sweeper re-enqueue, or two copies at once):

1. **claim**, one short transaction: read the jobs; a job waiting for this stage is moved into it by
   compare-and-set; a job already in this stage is resumed; a job past it is handed on unchanged; a
   terminal job is dropped. Inputs (image bytes, earlier scores) are read here.
2. **compute**, with no database session open: jobs sharing parameters run together, `batch_size` per
   model forward.
3. **save**, a fresh transaction per sub-batch: the stage's columns are written and the job moves on, in
   the same transaction, by compare-and-set from the stage's status. A job that moved meanwhile (cancelled,
   or finished by another copy of this message) writes nothing.

A per-job problem (an image that does not decode, invalid parameters) fails that job with a stable code;
an unexpected error in a sub-batch is retried job by job so only the job that causes it fails. Errors
worth retrying (database unreachable, CUDA out of memory) propagate to the task, which retries the message;
jobs already saved are then handed on, not recomputed.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from eta.config import ConfigError, ETAConfig
from eta.images import ImageError, ImageLimits, decode_image
from eta.settings import Settings
from eta.store import repository as repo
from eta.store.errors import BlobNotFoundError
from eta.store.lifecycle import TERMINAL_JOB_STATUSES, JobStatus
from eta.store.models import Batch, Job, JobResult

if TYPE_CHECKING:
    from eta.models import Models
    from eta.safety.pipeline import GenerationOutcome

logger = logging.getLogger(__name__)

# Failure codes a job can end with (stable: clients and dashboards match on them).
IMAGE_MISSING = "image_missing"
INVALID_PARAMS = "invalid_params"
INTERNAL_ERROR = "internal_error"
STAGE_TIMEOUT = "stage_timeout"
OUT_OF_MEMORY = "out_of_memory"
STALLED = "stalled"
_MAX_MESSAGE = 2000


class StageError(Exception):
    """A job cannot go through this stage; `code` is what the job ends with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StageContext:
    """What a stage needs from its process: sessions, models and settings."""

    sessions: sessionmaker[Session]
    models: Models
    settings: Settings

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session


@dataclass
class StageProgress:
    """What a stage call has done so far (kept up to date, so a task interrupted mid-way knows it too)."""

    stage: str
    # Jobs that completed this stage (or had already) and go to the next one, in message order.
    forward: list[uuid.UUID] = field(default_factory=list)
    # Jobs this call holds in the stage's status and has not yet saved or failed.
    pending: set[uuid.UUID] = field(default_factory=set)
    # Batches with a job that reached a terminal status here (their completion must be checked).
    touched_batches: set[uuid.UUID] = field(default_factory=set)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    # Model forwards run, by kind (e.g. {"clip_image": 2}); what the cross-job batching achieved.
    forwards: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.forwards[kind] = self.forwards.get(kind, 0) + n


@dataclass
class _Work:
    """One claimed job: what the compute step needs, read during the claim."""

    job_id: uuid.UUID
    batch_id: uuid.UUID | None
    prompt: str
    seed: int
    config: ETAConfig
    params_key: str
    image_bytes: bytes | None = None
    image: Image.Image | None = None
    result: dict[str, Any] = field(default_factory=dict)


def parse_ids(raw_ids: Sequence[Any]) -> list[uuid.UUID]:
    """Job ids from a message, in order, duplicates dropped; an id that is not a UUID is logged and skipped."""
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


def _load_jobs(session: Session, job_ids: Sequence[uuid.UUID]) -> list[Job]:
    rows = {job.id: job for job in session.scalars(sa.select(Job).where(Job.id.in_(job_ids)))}
    missing = [str(job_id) for job_id in job_ids if job_id not in rows]
    if missing:
        logger.warning("jobs %s: not found (deleted?), skipped", ", ".join(missing))
    return [rows[job_id] for job_id in job_ids if job_id in rows]


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def _work_for(job: Job) -> _Work:
    try:
        config = ETAConfig.from_dict(job.params)
    except (ConfigError, TypeError) as exc:
        raise StageError(INVALID_PARAMS, f"invalid parameters: {exc}") from exc
    return _Work(job_id=job.id, batch_id=job.batch_id, prompt=job.prompt, seed=job.seed, config=config,
                 params_key=_params_key(config.to_dict()))


def _read_image(session: Session, ctx: StageContext, job: Job, cache: dict[str, bytes]) -> bytes | None:
    if job.image_sha256 is None:
        return None
    if job.image_sha256 not in cache:
        try:
            cache[job.image_sha256] = repo_blob_store(session, ctx).get(job.image_sha256)
        except BlobNotFoundError as exc:
            raise StageError(IMAGE_MISSING, f"the job's image {job.image_sha256} is not in the blob store") from exc
    return cache[job.image_sha256]


def repo_blob_store(session: Session, ctx: StageContext) -> Any:
    from eta.store.blobs import make_blob_store

    return make_blob_store(session=session, settings=ctx.settings)


def _image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                       formats=frozenset(settings.image_formats))


def _decode(work: _Work, limits: ImageLimits) -> None:
    if work.image_bytes is not None:
        try:
            work.image = decode_image(work.image_bytes, limits=limits).image
        except ImageError as exc:
            raise StageError(exc.code, str(exc)) from exc
        work.image_bytes = None  # the decoded image is what the models read


def _groups(work: Sequence[_Work], size: int) -> Iterator[list[_Work]]:
    """Jobs sharing parameters, `size` at a time, in first-seen order."""
    by_params: dict[str, list[_Work]] = {}
    for item in work:
        by_params.setdefault(item.params_key, []).append(item)
    for items in by_params.values():
        for start in range(0, len(items), size):
            yield items[start:start + size]


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_MESSAGE]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def fail_jobs(ctx: StageContext, progress: StageProgress, failures: dict[uuid.UUID, tuple[str, str]],
              *, status: JobStatus, batches: dict[uuid.UUID, uuid.UUID | None]) -> None:
    """End jobs `failed` with their code, if they are still in `status` (one transaction)."""
    if not failures:
        return
    with ctx.transaction() as session:
        for job_id, (code, message) in failures.items():
            if repo.transition_job(session=session, job_id=job_id, expected=status, to=JobStatus.FAILED,
                                   error_code=code, error_message=message):
                logger.warning("job %s: failed in stage %s with %s: %s", job_id, progress.stage, code, message)
                progress.failed[job_id] = code
                batch_id = batches.get(job_id)
                if batch_id is not None:
                    progress.touched_batches.add(batch_id)
    progress.pending.difference_update(failures)


def _fail_pending(ctx: StageContext, progress: StageProgress, status: JobStatus, code: str, message: str,
                  batches: dict[uuid.UUID, uuid.UUID | None]) -> None:
    fail_jobs(ctx, progress, dict.fromkeys(progress.pending, (code, message)), status=status, batches=batches)


def _compute_isolating(progress: StageProgress, group: list[_Work],
                       compute: Callable[[list[_Work]], list[Any]],
                       is_retryable: Callable[[BaseException], bool]) -> list[tuple[_Work, Any]]:
    """Run `compute` on the group; if it raises something not worth retrying, run each job alone so only
    the jobs that raise fail. Returns (work, output) pairs; a failing job's output is the exception."""
    try:
        return list(zip(group, compute(group), strict=True))
    except Exception as exc:
        if is_retryable(exc):
            raise
        if len(group) == 1:
            logger.exception("job %s: stage %s raised", group[0].job_id, progress.stage)
            return [(group[0], exc)]
        logger.warning("jobs %s: stage %s raised %s on the group; retrying them one by one",
                       ", ".join(str(w.job_id) for w in group), progress.stage, _message(exc))
    pairs: list[tuple[_Work, Any]] = []
    for item in group:
        pairs.extend(_compute_isolating(progress, [item], compute, is_retryable))
    return pairs


# ------------------------------------------------------------------------------------------------ pre
def run_pre_evaluation(ctx: StageContext, job_ids: Sequence[uuid.UUID], *, batch_size: int,
                       progress: StageProgress, is_retryable: Callable[[BaseException], bool]) -> StageProgress:
    """CLIP pre-evaluation of a chunk: s_pre for every image job, `batch_size` images per CLIP forward.

    Text-only jobs have nothing to pre-evaluate: they move from `queued` straight to `generating`.
    """
    from eta.safety.pipeline import pre_evaluate

    work: list[_Work] = []
    failures: dict[uuid.UUID, tuple[str, str]] = {}
    batches: dict[uuid.UUID, uuid.UUID | None] = {}
    with ctx.transaction() as session:
        cache: dict[str, bytes] = {}
        for job in _load_jobs(session, job_ids):
            batches[job.id] = job.batch_id
            if job.status == JobStatus.QUEUED and job.image_sha256 is None:
                if repo.transition_job(session=session, job_id=job.id, expected=JobStatus.QUEUED,
                                       to=JobStatus.GENERATING):
                    logger.info("job %s: text-only, no pre-evaluation", job.id)
                    progress.forward.append(job.id)
                continue
            if job.status == JobStatus.QUEUED:
                if not repo.transition_job(session=session, job_id=job.id, expected=JobStatus.QUEUED,
                                           to=JobStatus.PRE_EVALUATING):
                    continue  # cancelled, or claimed by another copy of this message
            elif job.status in (JobStatus.GENERATING, JobStatus.POST_EVALUATING):
                progress.forward.append(job.id)
                continue
            elif job.status != JobStatus.PRE_EVALUATING:
                continue
            progress.pending.add(job.id)
            try:
                item = _work_for(job)
                item.image_bytes = _read_image(session, ctx, job, cache)
                work.append(item)
            except StageError as exc:
                failures[job.id] = (exc.code, str(exc))
    fail_jobs(ctx, progress, failures, status=JobStatus.PRE_EVALUATING, batches=batches)

    limits = _image_limits(ctx.settings)
    ready: list[_Work] = []
    for item in work:
        try:
            _decode(item, limits)
            ready.append(item)
        except StageError as exc:
            failures[item.job_id] = (exc.code, str(exc))
    fail_jobs(ctx, progress, failures, status=JobStatus.PRE_EVALUATING, batches=batches)

    clip = ctx.models.require("clip")

    def compute(group: list[_Work]) -> list[Any]:
        config = group[0].config
        progress.count("clip_text")
        progress.count("clip_image", -(-len(group) // batch_size))
        return list(pre_evaluate(clip, [w.image for w in group], config, batch_size=batch_size))

    # One group per parameter set, so the safety prompt is embedded once per group and images go through
    # CLIP `batch_size` at a time across all jobs of the chunk.
    for group in _groups(ready, len(ready) or 1):
        start = time.perf_counter()
        pairs = _compute_isolating(progress, group, compute, is_retryable)
        elapsed = _ms(start)
        with ctx.transaction() as session:
            for item, result in pairs:
                if isinstance(result, BaseException):
                    failures[item.job_id] = (INTERNAL_ERROR, _message(result))
                    continue
                if repo.record_pre_evaluation(session=session, job_id=item.job_id, s_pre=result.s_pre,
                                              pre_unsafe=result.pre_unsafe, tau_pre=item.config.tau_pre,
                                              elapsed_ms=elapsed) and \
                        repo.transition_job(session=session, job_id=item.job_id,
                                            expected=JobStatus.PRE_EVALUATING, to=JobStatus.GENERATING):
                    logger.info("job %s: s_pre %.4f -> %s", item.job_id, result.s_pre,
                                "unsafe" if result.pre_unsafe else "safe")
                    progress.forward.append(item.job_id)
        progress.pending.difference_update(item.job_id for item, _ in pairs)
    fail_jobs(ctx, progress, failures, status=JobStatus.PRE_EVALUATING, batches=batches)
    return progress


# ------------------------------------------------------------------------------------------- generate
def run_generation(ctx: StageContext, job_ids: Sequence[uuid.UUID], *, batch_size: int,
                   progress: StageProgress, is_retryable: Callable[[BaseException], bool]) -> StageProgress:
    """Vanilla answers (`batch_size` prompts per `generate` call, jobs sharing parameters together), their
    reward scores, the decision, and alignment where decided. Each sub-batch is saved as soon as it is done.
    """
    from eta.safety.pipeline import PreEvaluation, fingerprint, generate

    work: list[_Work] = []
    failures: dict[uuid.UUID, tuple[str, str]] = {}
    batches: dict[uuid.UUID, uuid.UUID | None] = {}
    with ctx.transaction() as session:
        cache: dict[str, bytes] = {}
        jobs = _load_jobs(session, job_ids)
        results = _results(session, [job.id for job in jobs])
        for job in jobs:
            batches[job.id] = job.batch_id
            if job.status == JobStatus.POST_EVALUATING:
                progress.forward.append(job.id)
                continue
            if job.status != JobStatus.GENERATING:
                continue  # not ready (its pre-evaluation message will bring it), or ended
            progress.pending.add(job.id)
            try:
                item = _work_for(job)
                item.image_bytes = _read_image(session, ctx, job, cache)
                row = results.get(job.id)
                if item.image_bytes is not None and (row is None or row.s_pre is None):
                    raise StageError(INTERNAL_ERROR, "the job has an image but no pre-evaluation")
                item.result = {"s_pre": row.s_pre if row else None, "pre_unsafe": row.pre_unsafe if row else None}
                work.append(item)
            except StageError as exc:
                failures[job.id] = (exc.code, str(exc))
    fail_jobs(ctx, progress, failures, status=JobStatus.GENERATING, batches=batches)

    limits = _image_limits(ctx.settings)
    ready: list[_Work] = []
    for item in work:
        try:
            _decode(item, limits)
            ready.append(item)
        except StageError as exc:
            failures[item.job_id] = (exc.code, str(exc))
    fail_jobs(ctx, progress, failures, status=JobStatus.GENERATING, batches=batches)

    from eta.safety.pipeline import ETAInput

    models = ctx.models
    prints: dict[str, dict[str, Any]] = {}

    def compute(group: list[_Work]) -> list[Any]:
        items = [ETAInput(prompt=w.prompt, image=w.image, seed=w.seed) for w in group]
        pre = [PreEvaluation(w.result["s_pre"], w.result["pre_unsafe"]) for w in group]
        outcomes = generate(models, items, pre, group[0].config)
        # generate_greedy runs one call per kind of input (with image / text-only), then one reward forward.
        kinds = {w.image is None for w in group}
        progress.count("vlm_generate", len(kinds))
        progress.count("reward_s_post")
        progress.count("aligned_jobs", sum(o.aligned for o in outcomes))
        return outcomes

    for group in _groups(ready, batch_size):
        pairs = _compute_isolating(progress, group, compute, is_retryable)
        with ctx.transaction() as session:
            for item, outcome in pairs:
                if isinstance(outcome, BaseException):
                    failures[item.job_id] = (INTERNAL_ERROR, _message(outcome))
                    continue
                if item.params_key not in prints:
                    prints[item.params_key] = fingerprint(models, item.config)
                printed = prints[item.params_key]
                if repo.record_generation(
                    session=session, job_id=item.job_id, vanilla_response=outcome.vanilla_response,
                    s_post=outcome.s_post, post_unsafe=outcome.post_unsafe, tau_post=item.config.tau_post,
                    policy=item.config.policy, aligned=outcome.aligned, response=outcome.response,
                    trace=outcome.trace, fingerprint=printed, fingerprint_sha256=printed["digest"],
                    elapsed_ms=round(sum(outcome.timings_ms.values()), 3),
                ) and repo.transition_job(session=session, job_id=item.job_id, expected=JobStatus.GENERATING,
                                          to=JobStatus.POST_EVALUATING):
                    logger.info("job %s: s_post %.4f, %s (%s)", item.job_id, outcome.s_post,
                                "aligned" if outcome.aligned else "kept", outcome.decision)
                    progress.forward.append(item.job_id)
        progress.pending.difference_update(item.job_id for item, _ in pairs)
    fail_jobs(ctx, progress, failures, status=JobStatus.GENERATING, batches=batches)
    return progress


# ----------------------------------------------------------------------------------------------- post
def run_post_evaluation(ctx: StageContext, job_ids: Sequence[uuid.UUID], *, batch_size: int,
                        progress: StageProgress, is_retryable: Callable[[BaseException], bool]) -> StageProgress:
    """Reward score of each final answer (`batch_size` per forward; a kept answer reuses s_post) and the
    audit flags; the job then succeeds."""
    from eta.safety.pipeline import GenerationOutcome, PreEvaluation, final_evaluate

    work: list[_Work] = []
    failures: dict[uuid.UUID, tuple[str, str]] = {}
    batches: dict[uuid.UUID, uuid.UUID | None] = {}
    with ctx.transaction() as session:
        jobs = _load_jobs(session, job_ids)
        results = _results(session, [job.id for job in jobs])
        for job in jobs:
            batches[job.id] = job.batch_id
            if job.status != JobStatus.POST_EVALUATING:
                continue
            progress.pending.add(job.id)
            try:
                item = _work_for(job)
                row = results.get(job.id)
                if row is None or row.s_post is None or row.response is None:
                    raise StageError(INTERNAL_ERROR, "the job reached post-evaluation without a generation result")
                item.result = {"s_pre": row.s_pre, "pre_unsafe": row.pre_unsafe, "s_post": row.s_post,
                               "post_unsafe": bool(row.post_unsafe), "aligned": bool(row.aligned),
                               "response": row.response}
                work.append(item)
            except StageError as exc:
                failures[job.id] = (exc.code, str(exc))
    fail_jobs(ctx, progress, failures, status=JobStatus.POST_EVALUATING, batches=batches)

    reward = ctx.models.require("reward")

    def compute(group: list[_Work]) -> list[Any]:
        pre = [PreEvaluation(w.result["s_pre"], w.result["pre_unsafe"]) for w in group]
        outcomes = [_stored_outcome(w) for w in group]
        if any(o.aligned for o in outcomes):
            progress.count("reward_s_post_final")
        return list(final_evaluate(reward, pre, outcomes, group[0].config))

    def _stored_outcome(w: _Work) -> GenerationOutcome:
        r = w.result
        return GenerationOutcome(vanilla_response="", s_post=r["s_post"], post_unsafe=r["post_unsafe"],
                                 aligned=r["aligned"], decision="", response=r["response"], trace=[],
                                 seed=w.seed, vanilla_tokens=0, response_tokens=0)

    for group in _groups(work, batch_size):
        start = time.perf_counter()
        pairs = _compute_isolating(progress, group, compute, is_retryable)
        elapsed = _ms(start)
        with ctx.transaction() as session:
            for item, final in pairs:
                if isinstance(final, BaseException):
                    failures[item.job_id] = (INTERNAL_ERROR, _message(final))
                    continue
                if repo.record_post_evaluation(session=session, job_id=item.job_id,
                                               s_post_final=final.s_post_final, flagged=final.flagged,
                                               flag_reasons=final.flag_reasons, elapsed_ms=elapsed) and \
                        repo.transition_job(session=session, job_id=item.job_id,
                                            expected=JobStatus.POST_EVALUATING, to=JobStatus.SUCCEEDED):
                    logger.info("job %s: succeeded, s_post_final %.4f, flagged %s %s", item.job_id,
                                final.s_post_final, final.flagged, final.flag_reasons)
                    if item.batch_id is not None:
                        progress.touched_batches.add(item.batch_id)
        progress.pending.difference_update(item.job_id for item, _ in pairs)
    fail_jobs(ctx, progress, failures, status=JobStatus.POST_EVALUATING, batches=batches)
    return progress


def _results(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JobResult]:
    if not job_ids:
        return {}
    return {row.job_id: row for row in session.scalars(sa.select(JobResult).where(JobResult.job_id.in_(job_ids)))}


# ------------------------------------------------------------------------------------- batch completion
def complete_batches(ctx: StageContext, batch_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Mark finished batches `completed` (each in its own transaction, after the jobs' commits).

    Returns the batches this call completed that have a callback URL (exactly one caller gets each).
    """
    to_call: list[uuid.UUID] = []
    for batch_id in batch_ids:
        with ctx.transaction() as session:
            if not repo.complete_batch_if_finished(session=session, batch_id=batch_id):
                continue
            callback_url = session.scalar(sa.select(Batch.callback_url).where(Batch.id == batch_id))
        logger.info("batch %s: every job ended, batch completed", batch_id)
        if callback_url:
            to_call.append(batch_id)
    return to_call


STAGE_STATUS = {"pre": JobStatus.PRE_EVALUATING, "generate": JobStatus.GENERATING,
                "post": JobStatus.POST_EVALUATING}


def fail_pending(ctx: StageContext, progress: StageProgress, code: str, message: str) -> None:
    """Fail the jobs this call still holds in its stage (soft time limit, out of memory at batch size 1)."""
    if not progress.pending:
        return
    with ctx.transaction() as session:
        batches = dict(session.execute(sa.select(Job.id, Job.batch_id).where(Job.id.in_(progress.pending))).tuples())
    _fail_pending(ctx, progress, STAGE_STATUS[progress.stage], code, message, batches)


def is_terminal(status: JobStatus) -> bool:
    return status in TERMINAL_JOB_STATUSES
