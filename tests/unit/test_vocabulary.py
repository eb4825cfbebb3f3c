"""The shared names are declared once (eta.vocabulary) and every layer uses exactly them."""

from __future__ import annotations

import dataclasses

from click.testing import CliRunner

from api.audit.schemas import AuditFilters
from eta.commands.client import audit
from eta.store.repository import AuditFilter
from eta.vocabulary import AUDIT_FILTERS, FlagReason, ReviewVerdict


def test_the_audit_filters_are_the_same_in_the_store_the_api_and_the_command_line():
    names = [field.name for field in AUDIT_FILTERS]
    assert [f.name for f in dataclasses.fields(AuditFilter)] == names
    assert set(AuditFilters.model_fields) == set(names)
    options = {p.name for p in audit.params} - {"extra", "output_format", "limit", "output", "url", "api_key",
                                                  "retries", "progress"}
    assert options == set(names)


def test_audit_sends_each_filter_as_its_query_parameter(monkeypatch):
    sent: dict = {}

    class StandInClient:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def flagged(self, **filters):
            sent.update(filters)
            return iter(())

    monkeypatch.setattr("eta.client.ETAClient", StandInClient)
    result = CliRunner().invoke(audit, ["--url", "http://eta.test", "--api-key", "k", "--batch", "b1", "--not-aligned",
                                       "--verdict", "false_positive", "--s-post-min", "0.5"])
    assert result.exit_code == 0, result.output
    assert sent == {"batch_id": "b1", "aligned": False, "verdict": "false_positive", "s_post_min": 0.5}


def test_the_review_page_and_the_flags_use_the_enums():
    from api.review.views import VERDICT_LABELS

    assert list(VERDICT_LABELS) == [v.value for v in ReviewVerdict]
    assert VERDICT_LABELS["false_positive"] == "False positive"
    assert [reason.value for reason in FlagReason] == ["image_unsafe", "response_unsafe", "final_response_unsafe"]
