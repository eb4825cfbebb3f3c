"""Pipeline commands that talk to a running ETA server: `eta submit`, `eta status`, `eta results`, `eta audit`.

The server and the key come from `--url` / `--api-key` or `ETA_URL` / `ETA_API_KEY`. Data goes to stdout
(a batch id, JSONL, CSV), everything meant for people (progress bars, summaries) to stderr, so the commands
compose in shell pipelines.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from eta.csvsafe import defuse

if TYPE_CHECKING:
    from eta.client import BatchItem, ETAClient

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})
# The first bytes of the formats above (WebP: "RIFF", four bytes of size, "WEBP"), to tell an image from a manifest.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# Exit status of a command whose batch ended but not as `completed` (failed or cancelled).
EXIT_BATCH_NOT_COMPLETED = 3

# Columns of `eta results --format csv`, in order: where each comes from in a job document.
RESULT_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("custom_id", lambda j: j.get("custom_id")),
    ("job_id", lambda j: j.get("id")),
    ("status", lambda j: j.get("status")),
    ("flagged", lambda j: (j.get("result") or {}).get("flagged")),
    ("aligned", lambda j: (j.get("result") or {}).get("aligned")),
    ("s_pre", lambda j: (j.get("result") or {}).get("s_pre")),
    ("pre_unsafe", lambda j: (j.get("result") or {}).get("pre_unsafe")),
    ("s_post", lambda j: (j.get("result") or {}).get("s_post")),
    ("post_unsafe", lambda j: (j.get("result") or {}).get("post_unsafe")),
    ("s_post_final", lambda j: (j.get("result") or {}).get("s_post_final")),
    ("flag_reasons", lambda j: ";".join((j.get("result") or {}).get("flag_reasons") or [])),
    ("response", lambda j: (j.get("result") or {}).get("response")),
    ("error_code", lambda j: (j.get("error") or {}).get("code")),
    ("error_message", lambda j: (j.get("error") or {}).get("message")),
    ("seed", lambda j: j.get("seed")),
    ("created_at", lambda j: j.get("created_at")),
    ("finished_at", lambda j: j.get("finished_at")),
)


class ClientCommandError(click.ClickException):
    """The server refused or could not be reached: one line on stderr, exit status 1."""

    exit_code = 1


# --------------------------------------------------------------------------------------- options
def server_options(command: F) -> F:
    """`--url`, `--api-key`, `--retries` and `--progress`, passed on as a ready `ETAClient` named `eta`."""

    @click.option("--url", envvar="ETA_URL", default="http://127.0.0.1:8000", show_default=True,
                  help="The ETA server (env ETA_URL).")
    @click.option("--api-key", envvar="ETA_API_KEY", help="API key (env ETA_API_KEY).")
    @click.option("--retries", envvar="ETA_RETRIES", default=5, show_default=True, type=click.IntRange(0, 20),
                  help="Retries of a request after a connection error or a 5xx, with exponential backoff "
                       "(env ETA_RETRIES).")
    @click.option("--progress/--no-progress", default=None,
                  help="Progress bars on stderr (default: only when stderr is a terminal).")
    @functools.wraps(command)
    def wrapper(url: str, api_key: str | None, retries: int, progress: bool | None, **kwargs: Any) -> Any:
        from eta.client import ETAAPIError, ETAClient, ETAClientError, RetryPolicy

        if not api_key:
            raise click.UsageError("no API key: set ETA_API_KEY or pass --api-key")
        with ETAClient(url, api_key, progress=progress, retry=RetryPolicy(max_attempts=retries + 1)) as eta:
            try:
                return command(eta=eta, **kwargs)
            except ETAAPIError as exc:
                raise ClientCommandError(f"{url}: {exc}") from exc
            except ETAClientError as exc:
                raise ClientCommandError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _parse_params(params_json: str | None, settings: Iterable[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc.msg}", param_hint="--params") from exc
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--params")
        params.update(loaded)
    for setting in settings:
        name, sep, raw = setting.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {setting!r}", param_hint="--set")
        try:
            params[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[name.strip()] = raw  # a bare word, e.g. --set policy=either
    return params


# ---------------------------------------------------------------------------------------- inputs
def items_from_folder(folder: Path, *, prompt: str, recursive: bool,
                      allow_outside_paths: bool = False) -> list[BatchItem]:
    """One item per image file in `folder` (sorted), `custom_id` its path relative to the folder.

    Raises:
        click.BadParameter: a file is a symlink that leads out of the folder (unless `allow_outside_paths`).
    """
    from eta.client import BatchItem

    pattern = "**/*" if recursive else "*"
    paths = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    items, refused = [], []
    for path in paths:
        custom_id = path.relative_to(folder).as_posix()
        try:
            image = confined_path(path, folder, allow_outside_paths=allow_outside_paths)
        except OutsidePathError as exc:
            refused.append(f"{path}: {exc}")
            continue
        items.append(BatchItem(prompt=prompt, image=image, custom_id=custom_id))
    if refused:
        raise click.BadParameter(_refusal(refused), param_hint="PATH")
    return items


def item_from_image(image: Path, *, prompt: str) -> BatchItem:
    """A one-item batch of the image file `image`, `custom_id` its file name."""
    from eta.client import BatchItem

    return BatchItem(prompt=prompt, image=image, custom_id=image.name)


def looks_like_an_image(path: Path) -> bool:
    """True for a file named like an image or starting with an image format's signature (a manifest is text)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except OSError:
        return False
    return head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


class OutsidePathError(ValueError):
    """An image path that leads out of the folder it must stay in."""


def confined_path(path: Path, root: Path, *, allow_outside_paths: bool) -> Path:
    """`path` with every symlink resolved, if it lies inside `root` (also resolved).

    A manifest often comes from someone else: without this, `"image": "/etc/passwd"`, `"../../.ssh/id_rsa"` or
    a symlink pointing out of the folder would upload whatever file it names. The resolved path is what gets
    read, so a symlink is followed once, here.

    Raises:
        OutsidePathError: the resolved path is outside `root` and `allow_outside_paths` is false.
    """
    resolved = path.resolve()
    if allow_outside_paths:
        return resolved
    base = root.resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise OutsidePathError(f"{resolved} is outside {base} (pass --allow-outside-paths to allow it)")
    return resolved


def _refusal(problems: list[str]) -> str:
    head = f"{len(problems)} image path(s) refused, nothing was uploaded:"
    return "\n".join([head, *(f"  {problem}" for problem in problems)])


def items_from_manifest(manifest: Path, *, default_prompt: str | None,
                        allow_outside_paths: bool = False) -> tuple[list[BatchItem], list[str]]:
    """Items of a JSONL manifest, and where each came from (`PATH:LINE`).

    Each line: `{"custom_id", "prompt", "image": PATH | "image_base64": ... | "image_url": URL, "params",
    "preset"}`; a relative image path is relative to the manifest's folder, and every image path must lead
    (symlinks resolved) to a file inside that folder unless `allow_outside_paths` (a URL is sent as is).

    Raises:
        click.BadParameter: a line is not a JSON object with known fields (naming the line), or image paths
            lead out of the manifest's folder (naming every such line).
    """
    from eta.client import BatchItem

    items, sources, refused = [], [], []
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {manifest}: {exc}", param_hint="PATH") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{where}: not valid JSON: {exc.msg}", param_hint="PATH") from exc
        if not isinstance(entry, dict):
            raise click.BadParameter(f"{where}: each line must be a JSON object", param_hint="PATH")
        if default_prompt is not None and entry.get("prompt") is None:
            entry["prompt"] = default_prompt
        image = entry.get("image")
        if isinstance(image, str):
            path = Path(image)
            try:
                entry["image"] = confined_path(path if path.is_absolute() else manifest.parent / path,
                                               manifest.parent, allow_outside_paths=allow_outside_paths)
            except OutsidePathError as exc:
                custom_id = entry.get("custom_id")
                named = f" (custom_id {custom_id!r})" if isinstance(custom_id, str) else ""
                refused.append(f"{where}{named}: image {image!r}: {exc}")
                continue
        try:
            items.append(BatchItem.coerce(entry))
        except ValueError as exc:
            raise click.BadParameter(f"{where}: {exc}", param_hint="PATH") from exc
        sources.append(where)
    if refused:
        raise click.BadParameter(_refusal(refused), param_hint="PATH")
    return items, sources


# -------------------------------------------------------------------------------------- printing
def _dump(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False)


def describe_batch(batch: Mapping[str, Any]) -> str:
    counts = "  ".join(f"{status} {n}" for status, n in batch["counts"].items() if n) or "no jobs"
    lines = [
        f"batch {batch['id']}  {batch['status']}  {batch['finished']}/{batch['total']} finished "
        f"({100 * batch['progress']:.0f}%)",
        f"  {counts}",
        f"  created {batch['created_at']}" + (f"  finished {batch['finished_at']}" if batch.get("finished_at") else ""),
    ]
    return "\n".join(lines)


def describe_job(job: Mapping[str, Any]) -> str:
    lines = [f"job {job['id']}  {job['status']}" + (f"  custom_id {job['custom_id']}" if job.get("custom_id") else "")]
    if job.get("error"):
        lines.append(f"  error {job['error']['code']}: {job['error'].get('message') or ''}".rstrip())
    result = job.get("result")
    if result:
        lines.append(f"  flagged {result['flagged']}  aligned {result['aligned']}  s_pre {result['s_pre']}  "
                     f"s_post {result['s_post']}  s_post_final {result['s_post_final']}")
        if result.get("response") is not None:
            lines.append(f"  response: {result['response']}")
    return "\n".join(lines)


def write_results(jobs: Iterable[dict[str, Any]], out: IO[str], output_format: str) -> int:
    """Write job documents as JSONL (whole documents) or CSV (`RESULT_COLUMNS`); return how many."""
    count = 0
    if output_format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([name for name, _ in RESULT_COLUMNS])
        for job in jobs:
            # Prompts and answers are untrusted text: defused as the server's export does (eta.csvsafe).
            writer.writerow(["" if (value := get(job)) is None else defuse(value) for _, get in RESULT_COLUMNS])
            count += 1
    else:
        for job in jobs:
            out.write(_dump(job) + "\n")
            count += 1
    return count


def _open_output(path: Path | None, mode: str) -> IO[Any]:
    if path is None:
        return sys.stdout.buffer if "b" in mode else sys.stdout
    if "b" in mode:
        return path.open(mode)
    return path.open(mode, encoding="utf-8", newline="")


# -------------------------------------------------------------------------------------- commands
@click.command("submit")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--prompt", help="The question for every image of a folder (a manifest's default prompt).")
@click.option("--recursive", "-r", is_flag=True, help="Include images in subfolders of a folder.")
@click.option("--allow-outside-paths", is_flag=True,
              help="Let manifest image paths (and symlinks in a folder) lead out of the manifest's folder; by default "
                   "such a path is refused and nothing is uploaded.")
@click.option("--params", "params_json", metavar="JSON", help="ETA parameters for every item, a JSON object.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="One ETA parameter (repeatable), e.g. --set max_new_tokens=64 --set policy=either.")
@click.option("--idempotency-key", help="Names this submission: a retry with the same key never makes a second "
                                        "batch (default: a fresh UUID, printed to stderr).")
@click.option("--callback-url", help="POSTed a signed summary when the batch ends.")
@click.option("--preset", metavar="NAME[@VERSION]",
              help="A stored preset for every item that names none (--params, --set and an item's params win).")
@click.option("--wait", "wait_for_end", is_flag=True, help="Wait until the batch ends (exit 3 unless completed).")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds (exit 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the batch document instead of its id.")
@server_options
def submit(eta: ETAClient, path: Path, prompt: str | None, recursive: bool, allow_outside_paths: bool,
           params_json: str | None, settings: tuple[str, ...], idempotency_key: str | None,
           callback_url: str | None, preset: str | None, wait_for_end: bool, timeout: float | None,
           as_json: bool) -> None:
    """Submit PATH as a batch and print the batch id.

    PATH is a folder of images (each one item, asked --prompt, custom_id its file name), one image (a one-item
    batch) or a JSONL manifest, one item a line: {"custom_id": "a", "prompt": "...", "image": "a.jpg",
    "params": {...}} (image paths are relative to the manifest and must stay inside its folder unless
    --allow-outside-paths; "image_base64" works too, and "image_url" for an image the server fetches; "image"
    may be left out for text-only items; "preset" names a stored preset).
    """
    import uuid

    from eta.client import ETAAPIError

    params = _parse_params(params_json, settings)
    if path.is_dir():
        if not prompt or not prompt.strip():
            raise click.UsageError("a folder needs --prompt (the question asked of every image)")
        items = items_from_folder(path, prompt=prompt, recursive=recursive, allow_outside_paths=allow_outside_paths)
        sources = [str(path / str(item.custom_id)) for item in items]
        if not items:
            raise click.BadParameter(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}",
                                     param_hint="PATH")
    elif looks_like_an_image(path):
        if not prompt or not prompt.strip():
            raise click.UsageError("an image needs --prompt (the question asked of it)")
        items, sources = [item_from_image(path, prompt=prompt)], [str(path)]
    else:
        items, sources = items_from_manifest(path, default_prompt=prompt, allow_outside_paths=allow_outside_paths)
        if not items:
            raise click.BadParameter(f"{path} has no items", param_hint="PATH")
    key = idempotency_key or str(uuid.uuid4())
    click.echo(f"submitting {len(items)} item(s) from {path} (Idempotency-Key {key})", err=True)
    try:
        batch = eta.submit_batch(items, key, params=params or None, callback_url=callback_url, preset=preset)
    except OSError as exc:
        raise click.BadParameter(f"cannot read an image: {exc}", param_hint="PATH") from exc
    except ETAAPIError as exc:
        if not exc.errors:
            raise
        # Name each bad item by where it came from (file name or manifest line), all of them.
        lines = [f"{exc.status} {exc.code}: the batch was refused, nothing was stored:"]
        for error in exc.errors:
            index = error.get("index")
            where = sources[index] if isinstance(index, int) and 0 <= index < len(sources) else f"item {index}"
            lines.append(f"  {where}: {error.get('field')} {error.get('code')}: {error.get('message')}")
        raise ClientCommandError("\n".join(lines)) from exc
    replayed = batch.get("submission", {}).get("dispatch") == "replayed"
    click.echo(f"batch {batch['id']}: {batch['total']} job(s) {batch['status']}"
               + (" (already submitted with this key)" if replayed else ""), err=True)
    if wait_for_end:
        batch = _wait(eta, batch["id"], timeout)
    click.echo(_dump(batch) if as_json else batch["id"])
    if wait_for_end and batch["status"] != "completed":
        sys.exit(EXIT_BATCH_NOT_COMPLETED)


def _wait(eta: ETAClient, batch_id: str, timeout: float | None, *, summary: bool = True) -> dict[str, Any]:
    """Wait for the batch to end; with `summary`, describe it on stderr. A timeout exits 1."""
    from eta.client import ETAWaitTimeout

    try:
        batch = eta.wait(batch_id, timeout=timeout)
    except ETAWaitTimeout as exc:
        click.echo(describe_batch(exc.batch), err=True)
        raise ClientCommandError(str(exc)) from exc
    if summary:
        click.echo(describe_batch(batch), err=True)
    return batch


@click.command("status")
@click.argument("ident", metavar="ID")
@click.option("--wait", "wait_for_end", is_flag=True, help="Wait until the batch ends (exit 3 unless completed).")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds (exit 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole document as JSON on stdout.")
@server_options
def status(eta: ETAClient, ident: str, wait_for_end: bool, timeout: float | None, as_json: bool) -> None:
    """Show a batch (counts per status, progress) or, when ID is a job's, the job."""
    from eta.client import ETAAPIError

    try:
        document = eta.get_batch(ident)
    except ETAAPIError as exc:
        if exc.code not in ("batch_not_found", "not_found"):
            raise
        try:
            document = eta.get_job(ident)
        except ETAAPIError as job_exc:
            if job_exc.code not in ("job_not_found", "not_found"):
                raise
            raise ClientCommandError(f"404 not_found: no batch or job {ident} for this key") from job_exc
    if document.get("object") == "job":
        click.echo(_dump(document) if as_json else describe_job(document))
        return
    if wait_for_end:
        document = _wait(eta, document["id"], timeout, summary=False)
    click.echo(_dump(document) if as_json else describe_batch(document))
    if wait_for_end and document["status"] != "completed":
        sys.exit(EXIT_BATCH_NOT_COMPLETED)


@click.command("results")
@click.argument("batch_id")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="jsonl: every job document; csv: one row per job with its scores and answer.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File (default stdout).")
@click.option("--wait", "wait_for_end", is_flag=True, help="Wait until the batch ends first.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds (exit 1).")
@click.option("--page-size", default=200, show_default=True, type=click.IntRange(1, 1000))
@server_options
def results(eta: ETAClient, batch_id: str, output_format: str, output: Path | None, wait_for_end: bool,
            timeout: float | None, page_size: int) -> None:
    """Export a batch's jobs, in submission order, with their results."""
    if wait_for_end:
        _wait(eta, batch_id, timeout)
    out = _open_output(output, "w")
    try:
        count = write_results(eta.iter_results(batch_id, page_size=page_size), out, output_format)
    finally:
        if output is not None:
            out.close()
        else:
            out.flush()
    click.echo(f"{count} job(s) of batch {batch_id}" + (f" written to {output}" if output else ""), err=True)


def _audit_filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`eta audit`'s filter options, one per filter of the audit endpoints (eta.vocabulary.AUDIT_FILTERS)."""
    from eta.vocabulary import AUDIT_FILTERS, ReviewVerdict

    kinds: dict[str, dict[str, Any]] = {
        "aligned": {"default": None}, "reviewed": {"default": None},
        "verdict": {"type": click.Choice([v.value for v in ReviewVerdict])},
        "created_from": {"metavar": "ISO-8601"}, "created_before": {"metavar": "ISO-8601"},
    }
    for field in reversed(AUDIT_FILTERS):
        extra = kinds.get(field.name, {"type": float} if field.name.startswith("s_") else {})
        command = click.option(field.option, field.name, help=field.help or None, **extra)(command)
    return command


@click.command("audit")
@_audit_filter_options
@click.option("--filter", "extra", multiple=True, metavar="NAME=VALUE",
              help="Any other query parameter of the audit endpoints (repeatable).")
@click.option("--format", "output_format", type=click.Choice(["table", "jsonl", "csv"]), default="table",
              show_default=True, help="table: one line per job; jsonl / csv: the server's streaming export.")
@click.option("--limit", type=click.IntRange(min=1), help="table: at most this many jobs (default all).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File (default stdout).")
@server_options
def audit(eta: ETAClient, extra: tuple[str, ...], output_format: str, limit: int | None, output: Path | None,
          **options: Any) -> None:
    """Flagged jobs of your tenant, newest first (any key; vanilla answers only for review and admin keys)."""
    filters = {name: value for name, value in options.items() if value is not None}
    for setting in extra:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {setting!r}", param_hint="--filter")
        filters[name] = value
    if output_format == "table":
        out = _open_output(output, "w")
        shown = 0
        for job in _first(eta.flagged(**filters), limit):
            out.write(_audit_line(job) + "\n")
            shown += 1
        if output is not None:
            out.close()
        click.echo(f"{shown} flagged job(s)", err=True)
        return
    binary = _open_output(output, "wb")
    try:
        written = eta.export(output_format, out=binary, **filters)
    finally:
        if output is not None:
            binary.close()
        else:
            binary.flush()
    click.echo(f"{written} bytes of {output_format}" + (f" written to {output}" if output else ""), err=True)


def _first(items: Iterator[dict[str, Any]], limit: int | None) -> Iterator[dict[str, Any]]:
    for index, item in enumerate(items):
        if limit is not None and index >= limit:
            return
        yield item


def _audit_line(record: Mapping[str, Any]) -> str:
    """created_at, job id, custom_id, scores, reasons and the newest verdict of one flagged-job record."""
    result = record.get("result") or {}
    review = record.get("review") or {}

    def score(name: str) -> str:
        value = result.get(name)
        return f"{name}={'-' if value is None else format(value, '.4f')}"

    return "\t".join([
        str(record.get("created_at")), str(record.get("id")), str(record.get("custom_id") or "-"),
        score("s_pre"), score("s_post"), score("s_post_final"), f"aligned={result.get('aligned')}",
        f"reasons={','.join(result.get('flag_reasons') or []) or '-'}", f"verdict={review.get('verdict') or '-'}",
    ])
