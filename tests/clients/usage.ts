// A few lines of a TypeScript pipeline written against the types openapi-typescript generates from the ETA API's
// document (eta-api.d.ts, generated beside this file by tests/integration/client/test_generated_clients.py).
// `tsc` must accept it; each `@ts-expect-error` line must be refused, so a type that went loose (`any`, a
// missing property) fails the check too.
import type { components, operations, paths } from "./eta-api";

type Job = components["schemas"]["JobOut"];
type Problem = components["schemas"]["ProblemOut"];
type NewJob = operations["create_job"]["requestBody"] extends { content: { "application/json": infer B } } | undefined
  ? B
  : never;
type Submitted = operations["create_job"]["responses"][202]["content"]["application/json"];
type ResultsPage = operations["list_batch_results"]["responses"][200]["content"]["application/json"];
type FlaggedPage = operations["list_flagged"]["responses"][200]["content"]["application/json"];
type NewReview = operations["record_review"]["requestBody"]["content"]["application/json"];
type Review = operations["record_review"]["responses"][201]["content"]["application/json"];
type JobPath = paths["/v1/jobs/{job_id}"]["get"]["parameters"]["path"];

export const newJob: NewJob = {
  prompt: "What is in this picture?",
  custom_id: "ticket-4711",
  params: { tau_pre: 0.16, policy: "both", num_candidates: 5 },
};

export const path: JobPath = { job_id: "3f2b8c1e-7a4d-4e0b-9c52-1d6f0a8e2b47" };

export function describe(job: Job): string {
  const scores = job.result ? `s_pre=${job.result.s_pre ?? "n/a"} s_post=${job.result.s_post ?? "n/a"}` : "no result";
  const error = job.error ? ` (${job.error.code}: ${job.error.message ?? ""})` : "";
  return `${job.id} ${job.status}${error} ${scores}`;
}

export function finished(job: Job): boolean {
  switch (job.status) {
    case "succeeded":
    case "failed":
    case "cancelled":
      return true;
    case "queued":
    case "pre_evaluating":
    case "generating":
    case "post_evaluating":
      return false;
  }
}

export function jobsOf(page: ResultsPage): { ids: string[]; next: string | null } {
  return { ids: page.data.map((job) => job.id), next: page.next_cursor };
}

export function flaggedReasons(page: FlaggedPage): string[] {
  return page.data.flatMap((record) => record.result.flag_reasons ?? []);
}

export function dispatch(submitted: Submitted): "dispatched" | "deferred" | "replayed" {
  return submitted.submission.dispatch;
}

export const verdict: NewReview = { verdict: "confirmed_unsafe", note: "seen in review" };

export function reviewer(review: Review): string {
  return `${review.verdict} by ${review.reviewer ?? "unknown"}`;
}

export function problemLine(problem: Problem): string {
  return `${problem.status} ${problem.code}: ${problem.detail ?? problem.title}`;
}

// @ts-expect-error: a job needs a prompt
export const noPrompt: NewJob = { custom_id: "x" };

// @ts-expect-error: the policy is one of the documented three
export const badPolicy: NewJob = { prompt: "?", params: { policy: "sometimes" } };

// @ts-expect-error: a verdict is one of the documented three
export const badVerdict: NewReview = { verdict: "maybe" };

// @ts-expect-error: a job has no `score` property
export const noSuchField = (job: Job) => job.score;
