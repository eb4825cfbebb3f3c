"""What each stage computes and records: the only part of a stage that is not the same for all three.

`workers.runner.StageRunner` claims the jobs, calls the step's `compute` on groups of them and its `record`
in the transaction that moves each job on; `workers.stage_table` says which step a stage runs, and
`workers.stage_types.StageStep` is the base every step extends. The
arithmetic itself is `eta.safety.pipeline`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eta.config import ModelRole, fingerprint_with_preset
from eta.store import repository as repo
from eta.store.models import Job, JobResult
from workers.stage_types import INTERNAL_ERROR, ModelCalls, StageError, StageStep, Work, storable

if TYPE_CHECKING:
    from eta.models import Models
    from eta.safety.pipeline import AnswerToAudit, FinalEvaluation, GenerationOutcome, PreEvaluation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generated:
    """A generation outcome and the fingerprint of the models and parameters that produced it."""

    outcome: GenerationOutcome
    fingerprint: dict[str, Any]


class PreEvaluationStep(StageStep):
    """CLIP pre-evaluation: s_pre for every image, `batch_size` images per CLIP forward.

    Image embeddings do not depend on the parameters, and the text side only on the safety prompt: jobs
    sharing a safety prompt go through CLIP together. Text-only jobs have nothing to pre-evaluate.
    """

    groups_by_batch_size = False

    def passes_over(self, job: Job) -> str | None:
        return "text-only, nothing to pre-evaluate" if job.image_sha256 is None and job.image_url is None else None

    def group_key(self, work: Work) -> str:
        return work.config.safety_prompt

    def compute(self, models: Models, group: list[Work], *, batch_size: int, calls: ModelCalls
                ) -> list[PreEvaluation]:
        from eta.safety.pipeline import PreEvaluation, pre_evaluate

        calls.add("clip_text")
        calls.add("clip_image", -(-len(group) // batch_size))
        scored = pre_evaluate(models.require(ModelRole.CLIP), [w.image for w in group], group[0].config,
                              batch_size=batch_size)
        # The group shares its safety prompt, not necessarily its threshold: judge each job by its own.
        return [PreEvaluation(r.s_pre, r.s_pre >= w.config.tau_pre) if r.s_pre is not None else r
                for w, r in zip(group, scored, strict=True)]

    def result(self, work: Work, output: PreEvaluation, *, elapsed_ms: float) -> repo.StageResult:
        return repo.pre_evaluation_result(job_id=work.job_id, s_pre=output.s_pre, pre_unsafe=output.pre_unsafe,
                                          tau_pre=work.config.tau_pre, elapsed_ms=elapsed_ms)

    def describe(self, output: PreEvaluation) -> str:
        return f"s_pre {output.s_pre:.4f} -> {'unsafe' if output.pre_unsafe else 'safe'}"


class GenerationStep(StageStep):
    """Vanilla answers (`batch_size` prompts per `generate` call, jobs sharing parameters together), their
    reward scores, the decision, and alignment where decided."""

    reads_results = True

    def __init__(self) -> None:
        # Fingerprint of models and parameters, once per parameter set.
        self._prints: dict[str, dict[str, Any]] = {}

    def stored_inputs(self, job: Job, stored: JobResult | None) -> PreEvaluation:
        from eta.safety.pipeline import PreEvaluation

        if job.image_sha256 is not None and (stored is None or stored.s_pre is None):
            raise StageError(INTERNAL_ERROR, "the job has an image but no pre-evaluation")
        return PreEvaluation(stored.s_pre if stored else None, stored.pre_unsafe if stored else None)

    def compute(self, models: Models, group: list[Work], *, batch_size: int, calls: ModelCalls
                ) -> list[Generated]:
        from eta.safety.pipeline import ETAInput, fingerprint, generate

        items = [ETAInput(prompt=w.prompt, image=w.image, seed=w.seed) for w in group]
        outcomes = generate(models, items, [w.stored for w in group], group[0].config, calls=calls)
        # generate_greedy makes one call per kind of input (with an image, text-only); then one reward forward.
        calls.add("vlm_generate", len({w.image is None for w in group}))
        calls.add("reward_s_post")
        calls.add("aligned_jobs", sum(o.aligned for o in outcomes))
        # A group shares its parameters (the default group key).
        key = group[0].params_key
        if key not in self._prints:
            self._prints[key] = fingerprint(models, group[0].config)
        return [Generated(outcome, self._prints[key]) for outcome in outcomes]

    def result(self, work: Work, output: Generated, *, elapsed_ms: float) -> repo.StageResult:
        outcome, printed = output.outcome, fingerprint_with_preset(output.fingerprint, work.preset)
        return repo.generation_result(
            job_id=work.job_id, vanilla_response=storable(outcome.vanilla_response),
            s_post=outcome.s_post, post_unsafe=outcome.post_unsafe, tau_post=work.config.tau_post,
            policy=work.config.policy, aligned=outcome.aligned, response=storable(outcome.response),
            trace=storable(outcome.trace), fingerprint=printed, fingerprint_sha256=printed["digest"],
            # The pipeline's own breakdown (generation, scoring, alignment) is more exact than the group's.
            elapsed_ms=round(sum(outcome.timings_ms.values()), 3),
        )

    def describe(self, output: Generated) -> str:
        outcome = output.outcome
        return f"s_post {outcome.s_post:.4f}, {'aligned' if outcome.aligned else 'kept'} ({outcome.decision})"


class PostEvaluationStep(StageStep):
    """Reward score of each final answer (`batch_size` per forward; a kept answer reuses s_post) and the audit
    flags; the job then succeeds."""

    reads_image = False
    reads_results = True

    def stored_inputs(self, job: Job, stored: JobResult | None) -> AnswerToAudit:
        from eta.safety.pipeline import AnswerToAudit

        if stored is None or stored.s_post is None or stored.response is None:
            raise StageError(INTERNAL_ERROR, "the job reached post-evaluation without a generation result")
        return AnswerToAudit(pre_unsafe=stored.pre_unsafe, s_post=stored.s_post,
                             post_unsafe=bool(stored.post_unsafe), aligned=bool(stored.aligned),
                             response=stored.response)

    def compute(self, models: Models, group: list[Work], *, batch_size: int, calls: ModelCalls
                ) -> list[FinalEvaluation]:
        from eta.safety.pipeline import final_evaluate

        answers: list[AnswerToAudit] = [w.stored for w in group]
        if any(a.aligned for a in answers):
            calls.add("reward_s_post_final")
        return final_evaluate(models.require(ModelRole.REWARD), answers, group[0].config)

    def result(self, work: Work, output: FinalEvaluation, *, elapsed_ms: float) -> repo.StageResult:
        return repo.post_evaluation_result(job_id=work.job_id, s_post_final=output.s_post_final,
                                           flagged=output.flagged, flag_reasons=output.flag_reasons,
                                           elapsed_ms=elapsed_ms)

    def describe(self, output: FinalEvaluation) -> str:
        return f"succeeded, s_post_final {output.s_post_final:.4f}, flagged {output.flagged} {output.flag_reasons}"
