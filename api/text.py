"""One check for every free-text field a client sends: prompts, custom ids, parameter strings, notes,
filters, form fields. Text must be valid Unicode that the database can store: no NUL, no lone surrogate
(JSON can spell one as \\ud800), within its length limit, and not blank where it is required.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

# JSON Schema for the same rule: no NUL anywhere (surrogates cannot be written in a valid document).
NO_NUL_PATTERN = r"^[^\x00]*$"
# ... and at least one character that is not white space.
NOT_BLANK_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"


def text_problem(value: Any, *, name: str, limit: int, required: bool = False) -> str | None:
    """Why `value` is not acceptable text for field `name`, or None when it is."""
    if value is None:
        return f"{name} is required" if required else None
    if not isinstance(value, str):
        return f"{name} must be a string"
    if required and not value.strip():
        return f"{name} must not be empty"
    if len(value) > limit:
        return f"{name} has {len(value)} characters; the limit is {limit}"
    if "\x00" in value:
        return f"{name} contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid UTF-8 (invalid bytes or a lone surrogate)"
    return None


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8 (invalid bytes or a lone surrogate)") from None
    return value


def SafeText(max_length: int, **field: Any) -> Any:  # noqa: N802 - used like a type
    """A pydantic string field held to the same rule, documented in the schema."""
    return Annotated[str, Field(max_length=max_length, pattern=NO_NUL_PATTERN, **field), AfterValidator(_storable)]

