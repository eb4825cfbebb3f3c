"""Spreadsheet-safe CSV cells, shared by the server's audit export and the client's `eta results --format csv`.

A spreadsheet runs a cell that starts with `= + - @` (or a tab or carriage return, which some strip first)
as a formula; prompts and answers are untrusted text. OWASP's defence: a leading `'` makes the cell text.
Standard library only, so the client needs nothing of the service to use it.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defuse(value: Any) -> Any:
    """`value` with a leading quote when it is text a spreadsheet would run; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
