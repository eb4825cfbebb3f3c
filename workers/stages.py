"""The three stages over a chunk of jobs: read from the store, compute through `eta.safety.pipeline`, save.

Every stage has the same shape, and is safe to run twice on the same ids (a redelivered message, a sweeper
re-enqueue, or two copies at once):

1. **claim**, one short transaction: read the jobs; a job waiting for this stage is moved into it by
   compare-and-set; a job already in it is resumed; a job past it is handed on unchanged; a terminal job
   is dropped. Inputs (image bytes, earlier scores) are read here.
2. **compute**, with no database session open: jobs that can share model calls run together, `batch_size`
   per call.
3. **save**, a fresh transaction per group: the stage's columns are written and the job moves on, in the
   same transaction, by compare-and-set from the stage's status. A job that moved meanwhile (cancelled, or
   finished by another copy of the message) writes nothing.

A per-job problem (an image that does not decode, invalid parameters, a model error on one input, a result
the database refuses) fails that job with a stable code: a group that raises is re-run, or re-saved, job by
job. Errors that say nothing about the jobs (database unreachable, CUDA out of memory, the soft time limit)
propagate to the task, which retries or gives up for the whole message; jobs already saved are then handed
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
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from eta.config import ConfigError, ETAConfig
from eta.images import ImageError, ImageLimits, decode_image
from eta.settings import Settings
from eta.store import repository as repo
from eta.store.blobs import make_blob_store
from eta.store.errors import BlobNotFoundError
from eta.store.lifecycle import JobStatus
from eta.store.models import Batch, Job, JobResult

if TYPE_CHECKING:
    from eta.models import Models
    from eta.safety.pipeline import GenerationOutcome

logger = logging.getLogger(__name__)

# Failure codes a job can end with (stable: clients and dashboards match on them). Image decoding adds the
# codes of `eta.images.ImageError` (image_unreadable, image_too_many_pixels, ...).
IMAGE_MISSING = "image_missing"
INVALID_PARAMS = "invalid_params"
INTERNAL_ERROR = "internal_error"
STAGE_TIMEOUT = "stage_timeout"
OUT_OF_MEMORY = "out_of_memory"
STALLED = "stalled"
_MAX_MESSAGE = 2000

STAGE_STATUS = {"pre": JobStatus.PRE_EVALUATING, "generate": JobStatus.GENERATING,
                "post": JobStatus.POST_EVALUATING}


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
    """What a stage call has done so far, kept current so that a task interrupted mid-way knows it too."""

    stage: str
    # Jobs that completed this stage (or had already) and go to the next one.
    forward: list[uuid.UUID] = field(default_factory=list)
    # Jobs this call holds in the stage's status and has neither saved nor failed yet.
    pending: set[uuid.UUID] = field(default_factory=set)
    # Batches with a job that reached a terminal status here (whether they completed must be checked).
    touched_batches: set[uuid.UUID] = field(default_factory=set)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    # Model calls run, by kind (e.g. {"clip_image": 2}): what the cross-job batching achieved.
    model_calls: dict[str, int] = field(default_factory=dict)
    # Batch of each job seen, for the failure bookkeeping.
    batch_of: dict[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.model_calls[kind] = self.model_calls.get(kind, 0) + n


@dataclass
class _Work:
    """One claimed job and what the compute step needs, read during the claim."""

    job_id: uuid.UUID
    prompt: str
    seed: int
    config: ETAConfig
    params_key: str
    image_bytes: bytes | None = None
    image: Image.Image | None = None
    stored: dict[str, Any] = field(default_factory=dict)


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


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_MESSAGE]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class _StageRun:
    """Bookkeeping shared by the three stages: claims, failures, isolation of bad jobs, saving."""

    def __init__(self, ctx: StageContext, progress: StageProgress, propagates: Callable[[BaseException], bool]):
        self.ctx = ctx
        self.progress = progress
        self.status = STAGE_STATUS[progress.stage]
        self.propagates = propagates
        self._failures: dict[uuid.UUID, tuple[str, str]] = {}
        self._images: dict[str, bytes] = {}

    # ---------------------------------------------------------------------------------------- claim
    def load(self, session: Session, job_ids: Sequence[uuid.UUID]) -> list[Job]:
        rows = {job.id: job for job in session.scalars(sa.select(Job).where(Job.id.in_(job_ids)))}
        missing = [str(job_id) for job_id in job_ids if job_id not in rows]
        if missing:
            logger.warning("jobs %s: not found (deleted?), skipped", ", ".join(missing))
        jobs = [rows[job_id] for job_id in job_ids if job_id in rows]
        self.progress.batch_of.update((job.id, job.batch_id) for job in jobs)
        return jobs

    def hold(self, session: Session, job: Job, *, with_image: bool) -> _Work | None:
        """Take a job in this stage's status into the work list (or fail it if its inputs are bad)."""
        self.progress.pending.add(job.id)
        try:
            try:
                config = ETAConfig.from_dict(job.params)
            except (ConfigError, TypeError) as exc:
                raise StageError(INVALID_PARAMS, f"invalid parameters: {exc}") from exc
            work = _Work(job_id=job.id, prompt=job.prompt, seed=job.seed, config=config,
                         params_key=json.dumps(config.to_dict(), sort_keys=True, default=str))
            if with_image and job.image_sha256 is not None:
                work.image_bytes = self._read_image(session, job.image_sha256)
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

    def decode_images(self, work: list[_Work]) -> list[_Work]:
        """Decode each job's image under the intake limits; a job whose image does not decode fails."""
        limits = ImageLimits(max_bytes=self.ctx.settings.max_image_bytes,
                             max_pixels=self.ctx.settings.max_image_pixels,
                             formats=frozenset(self.ctx.settings.image_formats))
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

    # -------------------------------------------------------------------------------------- failures
    def fail(self, job_id: uuid.UUID, code: str, message: str) -> None:
        self._failures[job_id] = (code, message)

    def flush_failures(self) -> None:
        failures, self._failures = self._failures, {}
        fail_jobs(self.ctx, self.progress, failures)

    # -------------------------------------------------------------------------------- compute, save
    def compute(self, group: list[_Work], run: Callable[[list[_Work]], list[Any]]) -> list[tuple[_Work, Any]]:
        """Run the group; if it raises something that does not propagate, run each job alone so that only
        the jobs that raise fail. Returns (work, output) pairs; a failing job's output is its exception."""
        try:
            return list(zip(group, run(group), strict=True))
        except Exception as exc:
            if self.propagates(exc):
                raise
            if len(group) == 1:
                logger.exception("job %s: stage %s raised", group[0].job_id, self.progress.stage)
                return [(group[0], exc)]
            logger.warning("jobs %s: stage %s raised %s on the group; running them one by one",
                           ", ".join(str(w.job_id) for w in group), self.progress.stage, _message(exc))
        return [pair for item in group for pair in self.compute([item], run)]

    def save(self, pairs: list[tuple[_Work, Any]], save_one: Callable[[Session, _Work, Any], bool],
             on_saved: Callable[[_Work, Any], None]) -> None:
        """Save each output and move its job on (one transaction), then report the jobs that moved."""
        outputs = []
        for item, output in pairs:
            if isinstance(output, BaseException):
                self.fail(item.job_id, INTERNAL_ERROR, _message(output))
            else:
                outputs.append((item, output))
        self._save(outputs, save_one, on_saved)
        self.progress.pending.difference_update(item.job_id for item, _ in pairs)
        self.flush_failures()

    def _save(self, pairs: list[tuple[_Work, Any]], save_one: Callable[[Session, _Work, Any], bool],
              on_saved: Callable[[_Work, Any], None]) -> None:
        if not pairs:
            return
        moved = []
        try:
            with self.ctx.transaction() as session:
                for item, output in pairs:
                    if save_one(session, item, output):
                        moved.append((item, output))
        except sa.exc.SQLAlchemyError as exc:
            if self.propagates(exc):
                raise
            if len(pairs) == 1:
                logger.exception("job %s: the database refused the result of stage %s", pairs[0][0].job_id,
                                 self.progress.stage)
                self.fail(pairs[0][0].job_id, INTERNAL_ERROR, f"the result could not be stored: {_message(exc)}")
                return
            for pair in pairs:
                self._save([pair], save_one, on_saved)
            return
        for item, output in moved:
            on_saved(item, output)


def _groups(work: Sequence[_Work], size: int, key: Callable[[_Work], str] | None = None) -> Iterator[list[_Work]]:
    """Jobs sharing parameters (or another `key`), `size` at a time, in first-seen order."""
    by_key: dict[str, list[_Work]] = {}
    for item in work:
        by_key.setdefault(key(item) if key else item.params_key, []).append(item)
    for items in by_key.values():
        for start in range(0, len(items), size):
            yield items[start:start + size]


def _stored_results(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JobResult]:
    if not job_ids:
        return {}
    return {row.job_id: row for row in session.scalars(sa.select(JobResult).where(JobResult.job_id.in_(job_ids)))}


# ------------------------------------------------------------------------------------------------ pre
def run_pre_evaluation(ctx: StageContext, job_ids: Sequence[uuid.UUID], *, batch_size: int,
                       progress: StageProgress, is_retryable: Callable[[BaseException], bool]) -> StageProgress:
    """CLIP pre-evaluation of a chunk: s_pre for every image job, `batch_size` images per CLIP forward.

    Text-only jobs have nothing to pre-evaluate: they move from `queued` straight to `generating`.
    """
    from eta.safety.pipeline import PreEvaluation, pre_evaluate

    run = _StageRun(ctx, progress, is_retryable)
    work: list[_Work] = []
    passed: list[uuid.UUID] = []
    with ctx.transaction() as session:
        for job in run.load(session, job_ids):
            if job.status == JobStatus.QUEUED and job.image_sha256 is None:
                if repo.transition_job(session=session, job_id=job.id, expected=JobStatus.QUEUED,
                                       to=JobStatus.GENERATING):
                    logger.info("job %s: text-only, nothing to pre-evaluate", job.id)
                    passed.append(job.id)
                continue
            if job.status == JobStatus.QUEUED:
                if not repo.transition_job(session=session, job_id=job.id, expected=JobStatus.QUEUED,
                                           to=JobStatus.PRE_EVALUATING):
                    continue  # cancelled, or claimed by another copy of this message
            elif job.status in (JobStatus.GENERATING, JobStatus.POST_EVALUATING):
                passed.append(job.id)  # pre-evaluated already: hand it on
                continue
            elif job.status != JobStatus.PRE_EVALUATING:
                continue
            item = run.hold(session, job, with_image=True)
            if item is not None:
                work.append(item)
    progress.forward.extend(passed)
    run.flush_failures()
    ready = run.decode_images(work)

    clip = ctx.models.require("clip")

    def compute(group: list[_Work]) -> list[Any]:
        progress.count("clip_text")
        progress.count("clip_image", -(-len(group) // batch_size))
        scored = pre_evaluate(clip, [w.image for w in group], group[0].config, batch_size=batch_size)
        # The group shares its safety prompt, not necessarily its threshold: judge each job by its own.
        return [PreEvaluation(r.s_pre, r.s_pre >= w.config.tau_pre) if r.s_pre is not None else r
                for w, r in zip(group, scored, strict=True)]

    elapsed = 0.0

    def save_one(session: Session, item: _Work, result: Any) -> bool:
        return repo.record_pre_evaluation(session=session, job_id=item.job_id, s_pre=result.s_pre,
                                          pre_unsafe=result.pre_unsafe, tau_pre=item.config.tau_pre,
                                          elapsed_ms=elapsed) and \
            repo.transition_job(session=session, job_id=item.job_id, expected=JobStatus.PRE_EVALUATING,
                                to=JobStatus.GENERATING)

    def on_saved(item: _Work, result: Any) -> None:
        logger.info("job %s: s_pre %.4f -> %s", item.job_id, result.s_pre, "unsafe" if result.pre_unsafe else "safe")
        progress.forward.append(item.job_id)

    # Image embeddings do not depend on the parameters, and the text side only on the safety prompt: jobs
    # sharing a safety prompt go through CLIP together, `batch_size` images per forward.
    for group in _groups(ready, len(ready) or 1, key=lambda w: w.config.safety_prompt):
        start = time.perf_counter()
        pairs = run.compute(group, compute)
        elapsed = _ms(start)
        run.save(pairs, save_one, on_saved)
    return progress


# ------------------------------------------------------------------------------------------- generate
def run_generation(ctx: StageContext, job_ids: Sequence[uuid.UUID], *, batch_size: int,
                   progress: StageProgress, is_retryable: Callable[[BaseException], bool]) -> StageProgress:
    """Vanilla answers (`batch_size` prompts per `generate` call, jobs sharing parameters together), their
    reward scores, the decision, and alignment where decided. Each group is saved as soon as it is done.
    """
    from eta.safety.pipeline import ETAInput, PreEvaluation, fingerprint, generate

    run = _StageRun(ctx, progress, is_retryable)
    work: list[_Work] = []
    passed: list[uuid.UUID] = []
    with ctx.transaction() as session:
        jobs = run.load(session, job_ids)
        stored = _stored_results(session, [job.id for job in jobs])
        for job in jobs:
            if job.status == JobStatus.POST_EVALUATING:
                passed.append(job.id)
                continue
            if job.status != JobStatus.GENERATING:
                continue  # not there yet (its pre-evaluation message brings it), or ended
            item = run.hold(session, job, with_image=True)
            if item is None:
                continue
            row = stored.get(job.id)
            if job.image_sha256 is not None and (row is None or row.s_pre is None):
                run.fail(job.id, INTERNAL_ERROR, "the job has an image but no pre-evaluation")
                continue
            item.stored = {"s_pre": row.s_pre if row else None, "pre_unsafe": row.pre_unsafe if row else None}
            work.append(item)
    progress.forward.extend(passed)
    run.flush_failures()
    ready = run.decode_images(work)

    models = ctx.models
    prints: dict[str, dict[str, Any]] = {}

    def compute(group: list[_Work]) -> list[Any]:
        items = [ETAInput(prompt=w.prompt, image=w.image, seed=w.seed) for w in group]
        pre = [PreEvaluation(w.stored["s_pre"], w.stored["pre_unsafe"]) for w in group]
        outcomes = generate(models, items, pre, group[0].config)
        # generate_greedy makes one call per kind of input (with an image, text-only); then one reward forward.
        progress.count("vlm_generate", len({w.image is None for w in group}))
        progress.count("reward_s_post")
        progress.count("aligned_jobs", sum(o.aligned for o in outcomes))
        return outcomes

    def save_one(session: Session, item: _Work, outcome: GenerationOutcome) -> bool:
        if item.params_key not in prints:
            prints[item.params_key] = fingerprint(models, item.config)
        printed = prints[item.params_key]
        return repo.record_generation(
            session=session, job_id=item.job_id, vanilla_response=storable(outcome.vanilla_response),
            s_post=outcome.s_post, post_unsafe=outcome.post_unsafe, tau_post=item.config.tau_post,
            policy=item.config.policy, aligned=outcome.aligned, response=storable(outcome.response),
            trace=storable(outcome.trace), fingerprint=printed, fingerprint_sha256=printed["digest"],
            elapsed_ms=round(sum(outcome.timings_ms.values()), 3),
        ) and repo.transition_job(session=session, job_id=item.job_id, expected=JobStatus.GENERATING,
                                  to=JobStatus.POST_EVALUATING)

    def on_saved(item: _Work, outcome: GenerationOutcome) -> None:
        logger.info("job %s: s_post %.4f, %s (%s)", item.job_id, outcome.s_post,
                    "aligned" if outcome.aligned else "kept", outcome.decision)
        progress.forward.append(item.job_id)

    for group in _groups(ready, batch_size):
        run.save(run.compute(group, compute), save_one, on_saved)
    return progress


# ----------------------------------------------------------------------------------------------- post
def run_post_evaluation(ctx: StageContext, job_ids: Sequence[uuid.UUID], *, batch_size: int,
                        progress: StageProgress, is_retryable: Callable[[BaseException], bool]) -> StageProgress:
    """Reward score of each final answer (`batch_size` per forward; a kept answer reuses s_post) and the
    audit flags; the job then succeeds."""
    from eta.safety.pipeline import GenerationOutcome, PreEvaluation, final_evaluate

    run = _StageRun(ctx, progress, is_retryable)
    work: list[_Work] = []
    with ctx.transaction() as session:
        jobs = run.load(session, job_ids)
        stored = _stored_results(session, [job.id for job in jobs])
        for job in jobs:
            if job.status != JobStatus.POST_EVALUATING:
                continue
            item = run.hold(session, job, with_image=False)
            if item is None:
                continue
            row = stored.get(job.id)
            if row is None or row.s_post is None or row.response is None:
                run.fail(job.id, INTERNAL_ERROR, "the job reached post-evaluation without a generation result")
                continue
            item.stored = {"s_pre": row.s_pre, "pre_unsafe": row.pre_unsafe, "s_post": row.s_post,
                           "post_unsafe": bool(row.post_unsafe), "aligned": bool(row.aligned),
                           "response": row.response}
            work.append(item)
    run.flush_failures()

    reward = ctx.models.require("reward")

    def stored_outcome(w: _Work) -> GenerationOutcome:
        s = w.stored
        return GenerationOutcome(vanilla_response="", s_post=s["s_post"], post_unsafe=s["post_unsafe"],
                                 aligned=s["aligned"], decision="", response=s["response"], trace=[],
                                 seed=w.seed, vanilla_tokens=0, response_tokens=0)

    def compute(group: list[_Work]) -> list[Any]:
        pre = [PreEvaluation(w.stored["s_pre"], w.stored["pre_unsafe"]) for w in group]
        outcomes = [stored_outcome(w) for w in group]
        if any(o.aligned for o in outcomes):
            progress.count("reward_s_post_final")
        return list(final_evaluate(reward, pre, outcomes, group[0].config))

    elapsed = 0.0

    def save_one(session: Session, item: _Work, final: Any) -> bool:
        return repo.record_post_evaluation(session=session, job_id=item.job_id, s_post_final=final.s_post_final,
                                           flagged=final.flagged, flag_reasons=final.flag_reasons,
                                           elapsed_ms=elapsed) and \
            repo.transition_job(session=session, job_id=item.job_id, expected=JobStatus.POST_EVALUATING,
                                to=JobStatus.SUCCEEDED)

    def on_saved(item: _Work, final: Any) -> None:
        logger.info("job %s: succeeded, s_post_final %.4f, flagged %s %s", item.job_id, final.s_post_final,
                    final.flagged, final.flag_reasons)
        batch_id = progress.batch_of.get(item.job_id)
        if batch_id is not None:
            progress.touched_batches.add(batch_id)

    for group in _groups(work, batch_size):
        start = time.perf_counter()
        pairs = run.compute(group, compute)
        elapsed = _ms(start)
        run.save(pairs, save_one, on_saved)
    return progress


# ------------------------------------------------------------------------------- failures, completion
def fail_jobs(ctx: StageContext, progress: StageProgress, failures: dict[uuid.UUID, tuple[str, str]]) -> None:
    """End jobs `failed` with their code and message, if they are still in the stage's status."""
    if not failures:
        return
    status = STAGE_STATUS[progress.stage]
    with ctx.transaction() as session:
        for job_id, (code, message) in failures.items():
            if repo.transition_job(session=session, job_id=job_id, expected=status, to=JobStatus.FAILED,
                                   error_code=code, error_message=message[:_MAX_MESSAGE]):
                logger.warning("job %s: failed in stage %s with %s: %s", job_id, progress.stage, code, message)
                progress.failed[job_id] = code
                batch_id = progress.batch_of.get(job_id)
                if batch_id is not None:
                    progress.touched_batches.add(batch_id)
    progress.pending.difference_update(failures)


def fail_pending(ctx: StageContext, progress: StageProgress, code: str, message: str) -> None:
    """Fail the jobs this call still holds in its stage (soft time limit, out of memory at batch size 1)."""
    fail_jobs(ctx, progress, dict.fromkeys(progress.pending, (code, message)))


def complete_batches(ctx: StageContext, batch_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Mark finished batches `completed`, each in its own transaction after the jobs' commits.

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
