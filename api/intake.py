"""Validating submissions, all or nothing, before anything is written.

Every item is checked (prompt, image, parameters, custom_id) and every problem is collected, so one 422
names every bad item at once. Images are decoded fully with Pillow under the configured limits, once per
distinct content (sha256). Only a fully valid submission reaches the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.guards import loads_bounded
from api.text import text_problem
from eta.config import ConfigError, ETAConfig
from eta.images import ImageError, ImageLimits, check_image
from eta.outbound import OutboundRefused
from eta.settings import Settings
from eta.store import repository as repo
from eta.store.models import Preset

logger = logging.getLogger(__name__)


@dataclass
class ItemError:
    index: int  # 0-based position in the request (for a manifest: the line number minus one)
    field: str
    code: str
    message: str
    custom_id: str | None = None

    def to_dict(self, *, line_numbers: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.index + 1} if line_numbers else {"index": self.index}
        out.update({"custom_id": self.custom_id, "field": self.field, "code": self.code, "message": self.message})
        return out


@dataclass
class RawItem:
    """One submitted item before validation (from JSON, a form or a manifest line)."""

    prompt: Any
    image: bytes | None = None
    image_error: ItemError | None = None  # the image could not even be read (bad base64, missing file)
    params: Any = None
    custom_id: Any = None
    line: int | None = None  # 0-based manifest line, reported in errors instead of the item's index
    preset: Any = None  # `name` or `name@version`; None: the batch's preset, if any
    image_url: Any = None  # an image by reference (a `data:` URL is decoded into `image` by `take_image_url`)


@dataclass
class ValidImage:
    data: bytes
    sha256: str
    mime: str
    width: int
    height: int


@dataclass
class ValidSubmission:
    jobs: list[repo.NewJob]
    images: dict[str, ValidImage] = field(default_factory=dict)
    batch_params: dict[str, Any] = field(default_factory=dict)

    def request_hash(self, *, callback_url: str | None) -> str:
        """sha256 of the validated request in canonical form: what an idempotent replay must match."""
        canonical = {
            "callback_url": callback_url,
            "params": self.batch_params,
            "items": [[j.custom_id, j.prompt, j.image_sha256, dict(j.params), j.seed,
                       *([j.preset_name, j.preset_version, j.image_url]
                         if j.preset_name is not None or j.image_url is not None else [])] for j in self.jobs],
        }
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


class SubmissionInvalid(Exception):
    def __init__(self, errors: list[ItemError]) -> None:
        super().__init__(f"{len(errors)} invalid item(s)")
        self.errors = errors


def decode_base64_image(value: str) -> bytes:
    """Strict base64 (a `data:<mime>;base64,` prefix is allowed). Raises ValueError."""
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise ValueError("a data: URL must be base64-encoded")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc


def take_image_url(item: RawItem, value: Any, *, index: int) -> None:
    """Put a submitted `image_url` on the item: a `data:` URL is an inline image (decoded like `image_base64`),
    anything else a reference checked by `validate_items`."""
    if value is None:
        return
    if item.image is not None or item.image_error is not None:
        item.image_error = ItemError(index, "image_url", "image_conflict",
                                     "give the image once: image_base64 (or a file) or image_url, not both")
        return
    if isinstance(value, str) and value[:5].lower() == "data:":
        try:
            item.image = decode_base64_image("data:" + value[5:])
        except ValueError as exc:
            item.image_error = ItemError(index, "image_url", "image_url_invalid", str(exc))
        return
    item.image_url = value


# Checks an image URL at submission (syntax, addresses, scheme); raises OutboundRefused.
UrlCheck = Callable[[str], object]
# A preset reference resolved to its stored version, or to why it cannot be.
PresetLookup = Mapping[str, Preset | str]


def parse_params(value: Any, *, where: str) -> dict[str, Any]:
    """A params value from JSON (object) or a form (JSON text). Raises ConfigError naming `where`."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = loads_bounded(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(where, f"not valid JSON: {exc.msg}") from exc
        except ValueError as exc:
            raise ConfigError(where, f"not valid JSON: {exc}") from exc
    if value is None:  # JSON null: no parameters
        return {}
    if not isinstance(value, dict):
        raise ConfigError(where, "must be a JSON object")
    return value


# Integer parameters that cost compute, and the setting that bounds each.
PARAM_LIMITS = {
    "max_new_tokens": "max_new_tokens",
    "num_candidates": "max_num_candidates",
    "top_k": "max_top_k",
    "max_sentence_tokens": "max_sentence_tokens",
}


def _integral(params: dict[str, Any]) -> dict[str, Any]:
    """JSON does not tell 72 from 72.0: an integer parameter given as an integral number is that integer."""
    for name in (*PARAM_LIMITS, "seed"):
        value = params.get(name)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            params[name] = int(value)
    return params


def param_problems(params: Mapping[str, Any], settings: Settings) -> list[tuple[str, str]]:
    """(field, message) for each parameter beyond its operator-set limit or holding unstorable text."""
    problems = []
    for name, setting in PARAM_LIMITS.items():
        value, limit = params.get(name), getattr(settings.limits, setting)
        if isinstance(value, int) and value > limit:
            problems.append((f"params.{name}",
                             f"params.{name} is {value}; the limit is {limit} (ETA_{setting.upper()})"))
    for name, value in params.items():
        if isinstance(value, str) and (message := text_problem(value, name=f"params.{name}",
                                                               limit=settings.limits.max_param_chars)):
            problems.append((f"params.{name}", message))
    return problems


def validate_items(items: Iterable[RawItem], *, batch_params: Mapping[str, Any] | None, settings: Settings,
                   max_items: int | None = None, presets: PresetLookup | None = None,
                   batch_preset: str | None = None, check_url: UrlCheck | None = None) -> ValidSubmission:
    """Validate every item; raise `SubmissionInvalid` listing all problems, or return what to store.

    Parameters are layered: the defaults, then the item's preset (its own `preset`, else the batch's), then
    the batch params, then the item params; the merged set is checked by `ETAConfig` and frozen in full (the
    defaults of today are stored, so a later change of defaults never alters a queued job). A `seed` param
    becomes the job's seed; otherwise one is drawn at submission.

    Args:
        presets: every preset reference of the submission resolved (`repo.presets.resolve_presets`).
        check_url: checks an `image_url` (`eta.fetch.check_image_url` with the operator's networks); an item
            with an image URL is refused when it is None.
    """
    limits = ImageLimits(max_bytes=settings.limits.max_image_bytes, max_pixels=settings.limits.max_image_pixels,
                         formats=frozenset(settings.limits.image_formats))
    items = list(items)
    errors: list[ItemError] = []
    max_items = max_items or settings.limits.max_batch_items
    if len(items) > max_items:
        raise SubmissionInvalid([ItemError(max_items, "items", "too_many_items",
                                           f"{len(items)} items; the limit is {max_items}")])
    base = dict(batch_params or {})
    decoded: dict[str, ValidImage | ImageError] = {}
    decode_budget = limits.request_decode_pixels
    seen_custom_ids: dict[str, int] = {}
    jobs: list[repo.NewJob] = []
    for position, item in enumerate(items):
        index = item.line if item.line is not None else position
        custom_id = item.custom_id if isinstance(item.custom_id, str) else None
        item_errors: list[ItemError] = []

        def bad(field_name: str, code: str, message: str, _index: int = index, _cid: str | None = custom_id) -> None:
            item_errors.append(ItemError(_index, field_name, code, message, _cid))  # noqa: B023

        if (message := text_problem(item.prompt, name="prompt", limit=settings.limits.max_prompt_chars, required=True)):
            bad("prompt", "prompt_invalid", message)
        if (message := text_problem(item.custom_id, name="custom_id", limit=255, required=False)):
            bad("custom_id", "custom_id_invalid", message)
        elif custom_id is not None:
            if custom_id in seen_custom_ids:
                bad("custom_id", "custom_id_duplicate", f"custom_id {custom_id!r} is used by an earlier item too")
            else:
                seen_custom_ids[custom_id] = index

        preset: Preset | None = None
        reference = item.preset if item.preset is not None else batch_preset
        if reference is not None:
            found = (presets or {}).get(reference) if isinstance(reference, str) else "preset must be a string"
            if isinstance(found, Preset):
                preset = found
            else:
                bad("preset", "preset_not_found", found or f"no preset {reference!r}")

        config: ETAConfig | None = None
        try:
            merged = _integral({**(preset.params if preset is not None else {}), **base,
                                **parse_params(item.params, where="params")})
            config = ETAConfig.from_dict(merged)
        except ConfigError as exc:
            bad("params", "params_invalid", str(exc))
        except (TypeError, ValueError, OverflowError) as exc:
            bad("params", "params_invalid", str(exc))
        if config is not None:
            for field_name, message in param_problems(config.to_dict(), settings):
                bad(field_name, "param_out_of_range", message)
            if any(e.field.startswith("params.") for e in item_errors):
                config = None

        sha256: str | None = None
        if item.image_error is not None:
            item_errors.append(ItemError(index, item.image_error.field, item.image_error.code,
                                         item.image_error.message, custom_id))
        elif item.image is not None:
            sha256 = hashlib.sha256(item.image).hexdigest()
            if sha256 not in decoded:
                try:
                    # Full decodes while the request's budget lasts (small batches are proven decodable here);
                    # past it, the header and structure checks, and the worker's decode is the full one.
                    info = check_image(item.image, limits=limits, decode_pixels=decode_budget)
                    if info.decoded:
                        decode_budget -= info.width * info.height
                    decoded[sha256] = ValidImage(item.image, sha256, info.mime, info.width, info.height)
                except ImageError as exc:
                    decoded[sha256] = exc
            outcome = decoded[sha256]
            if isinstance(outcome, ImageError):
                bad("image", outcome.code, str(outcome))

        image_url: str | None = None
        if item.image_url is not None and item.image_error is None:
            if check_url is None:
                bad("image_url", "image_url_invalid", "images by reference are not accepted here")
            else:
                try:
                    check_url(item.image_url)
                    image_url = str(item.image_url)
                except OutboundRefused as exc:
                    bad("image_url", exc.code, str(exc))

        errors.extend(item_errors)
        if not item_errors and config is not None:
            params = config.to_dict()
            seed = params.pop("seed")
            jobs.append(repo.NewJob(prompt=item.prompt, image_sha256=sha256, custom_id=custom_id, params=params,
                                    seed=seed, image_url=image_url,
                                    preset_name=preset.name if preset is not None else None,
                                    preset_version=preset.version if preset is not None else None))
    if errors:
        raise SubmissionInvalid(errors)
    images = {k: v for k, v in decoded.items() if isinstance(v, ValidImage)}
    return ValidSubmission(jobs=jobs, images=images, batch_params=base)


def parse_manifest(data: bytes, files: Mapping[str, bytes]) -> tuple[list[RawItem], list[ItemError]]:
    """Read a JSONL manifest. Each line: {"custom_id", "prompt", "image": file name | null, "image_url",
    "params", "preset"}.

    Returns the items and the errors of lines that could not be read at all (their line numbers).
    Blank lines are skipped.
    """
    items: list[RawItem] = []
    errors: list[ItemError] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [ItemError(0, "manifest", "manifest_invalid", f"the manifest is not UTF-8: {exc}")]
    allowed = {"custom_id", "prompt", "image", "image_url", "params", "preset"}
    for number, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        index = number
        try:
            obj = loads_bounded(line)
        except json.JSONDecodeError as exc:
            errors.append(ItemError(index, "line", "manifest_line_invalid", f"not valid JSON: {exc.msg}"))
            continue
        except ValueError as exc:
            errors.append(ItemError(index, "line", "manifest_line_invalid", f"not valid JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            errors.append(ItemError(index, "line", "manifest_line_invalid", "each line must be a JSON object"))
            continue
        unknown = sorted(set(obj) - allowed)
        if unknown:
            errors.append(ItemError(index, unknown[0], "manifest_line_invalid",
                                    f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})",
                                    obj.get("custom_id") if isinstance(obj.get("custom_id"), str) else None))
            continue
        item = RawItem(prompt=obj.get("prompt"), params=obj.get("params"), custom_id=obj.get("custom_id"),
                       line=index, preset=obj.get("preset"))
        name = obj.get("image")
        if name is not None:
            if not isinstance(name, str) or name not in files:
                item.image_error = ItemError(index, "image", "image_missing",
                                             f"no uploaded file named {name!r} (upload it in the `files` field)")
            else:
                item.image = files[name]
        take_image_url(item, obj.get("image_url"), index=index)
        items.append(item)
    return items, errors
