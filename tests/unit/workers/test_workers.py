"""Pieces of the workers that need no service: the embedded broker, signing, settings, message shapes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from eta.commands.demo import demo_items
from eta.settings import Settings, SettingsError, StageLimits, get_settings, stage_variable, stage_variables
from workers.app import create_celery_app
from workers.broker import broker_url, is_embedded, transport_options
from workers.callbacks import sign, signature_header, verify_signature
from workers.enqueue import chunks, stage_chain
from workers.runner import parse_ids
from workers.stage_table import STAGES, check_stage_limits, roles_for_queues
from workers.stage_types import storable
from workers.tasks import backoff_s


def test_without_redis_the_broker_is_the_embedded_folder(tmp_path: Path):
    embedded = Settings(eta_data_dir=tmp_path, redis_url=None)
    assert is_embedded(embedded) and broker_url(embedded).startswith("etafs://")
    redis = Settings(eta_data_dir=tmp_path, redis_url="redis://h:6379/0", eta_broker_key_prefix="p:")
    assert broker_url(redis) == "redis://h:6379/0" and not is_embedded(redis)
    assert transport_options(redis)["global_keyprefix"] == "p:"


def test_the_embedded_broker_hands_each_message_to_one_consumer(tmp_path: Path):
    options = transport_options(Settings(eta_data_dir=tmp_path))
    with Connection("etafs://localhost/", transport_options=options) as producer_side, \
            Connection("etafs://localhost/", transport_options=options) as consumer_side:
        queue = producer_side.SimpleQueue("eta.pre")
        for n in range(3):
            queue.put({"n": n})
        staging = Path(options["staging_folder"])
        assert not any(staging.iterdir())  # written aside, then renamed into the queue folder
        first, second = consumer_side.SimpleQueue("eta.pre"), producer_side.SimpleQueue("eta.pre")
        got = [first.get(timeout=1).payload["n"], second.get(timeout=1).payload["n"], first.get(timeout=1).payload["n"]]
        assert sorted(got) == [0, 1, 2]  # each message once, whoever asked
        assert not any(Path(options["claimed_folder"]).iterdir())


def test_a_callback_signature_needs_the_secret_the_event_and_a_recent_timestamp():
    body = json.dumps({"batch": {"id": "b"}}).encode()
    signature = sign("s3cret", 1_700_000_000, "event-1", body)
    assert signature.startswith("v1=")
    ok = {"timestamp": "1700000000", "event_id": "event-1", "body": body, "signature": signature,
          "now": 1_700_000_100}
    assert verify_signature("s3cret", **ok)
    assert not verify_signature("other", **ok)
    assert not verify_signature("s3cret", **{**ok, "body": body + b" "})
    assert not verify_signature("s3cret", **{**ok, "event_id": "event-2"})
    assert not verify_signature("s3cret", **{**ok, "now": 1_700_001_000})  # replayed later
    assert not verify_signature("s3cret", **{**ok, "timestamp": "soon"})
    both = signature_header(["new", "s3cret"], 1_700_000_000, "event-1", body)  # during a rotation's overlap
    assert verify_signature("s3cret", **{**ok, "signature": both})
    assert verify_signature("new", **{**ok, "signature": both})


def test_time_limits_must_leave_the_sweeper_room():
    with pytest.raises(SettingsError, match="ETA_PRE_SOFT_TIME_LIMIT_S"):
        check_stage_limits(Settings(eta_pre_soft_time_limit_s=400, eta_pre_time_limit_s=360))
    with pytest.raises(SettingsError, match="ETA_SWEEP_GENERATING_AFTER_S"):
        check_stage_limits(Settings(eta_sweep_generating_after_s=60))
    with pytest.raises(SettingsError, match="stage generate"):
        create_celery_app(Settings(eta_stage_generate_time_limit_s=5000))  # the app factory checks them
    with pytest.raises(SettingsError, match="no stage 'pree'"):
        check_stage_limits(Settings(eta_stage_pree_batch_size=4))  # a misspelt stage is not ignored
    with pytest.raises(ValueError, match="must be below"):
        StageLimits(batch_size=1, soft_time_limit_s=10, time_limit_s=10, sweep_after_s=20)  # checked as declared


def test_stage_limits_come_from_the_table_and_the_old_and_new_variables(monkeypatch):
    for name in list(os.environ):
        if stage_variable(name):
            monkeypatch.delenv(name)
    assert check_stage_limits(Settings()) == {s.name: s.limits for s in STAGES}
    monkeypatch.setenv("ETA_CLIP_BATCH_SIZE", "7")
    monkeypatch.setenv("ETA_SWEEP_QUEUED_AFTER_S", "900")
    monkeypatch.setenv("ETA_GENERATE_BATCH_SIZE", "3")
    monkeypatch.setenv("ETA_STAGE_GENERATE_BATCH_SIZE", "5")  # the own name wins over the older one
    monkeypatch.setenv("ETA_STAGE_POST_SOFT_TIME_LIMIT_S", "100")
    limits = check_stage_limits(Settings())
    assert (limits["pre"].batch_size, limits["pre"].sweep_waiting_after_s) == (7, 900)
    assert limits["generate"].batch_size == 5
    assert (limits["post"].soft_time_limit_s, limits["post"].time_limit_s) == (100, 360)
    assert stage_variables("pre", "sweep_waiting_after_s") == ("ETA_STAGE_PRE_SWEEP_WAITING_AFTER_S",
                                                               "ETA_SWEEP_QUEUED_AFTER_S")
    assert stage_variable("ETA_STAGE_MAX_RETRIES") is None  # a field of its own, not a stage's limit
    monkeypatch.setenv("ETA_REWARD_BATCH_SIZE", "0")
    with pytest.raises(SettingsError, match="ETA_STAGE_POST_BATCH_SIZE / ETA_REWARD_BATCH_SIZE"):
        get_settings.__wrapped__()
    monkeypatch.delenv("ETA_REWARD_BATCH_SIZE")
    app = create_celery_app(Settings(eta_stage_pre_time_limit_s=400, eta_data_dir="/tmp/eta-unused"))  # noqa: S108
    assert app.conf.task_annotations["eta.pre_evaluate"] == {"soft_time_limit": 300, "time_limit": 400}


def test_a_worker_loads_only_what_its_queues_need():
    assert roles_for_queues(["eta.pre"]) == ("clip",)
    assert roles_for_queues(["eta.post"]) == ("reward",)
    assert roles_for_queues(["eta.control"]) == ()
    assert set(roles_for_queues(["eta.generate"])) == {"clip", "reward", "vlm"}


def test_a_chunk_is_one_chain_of_the_three_stages_carrying_ids_only(tmp_path: Path):
    app = create_celery_app(Settings(eta_data_dir=tmp_path))
    ids = [uuid.uuid4() for _ in range(5)]
    assert [len(c) for c in chunks(ids, 2)] == [2, 2, 1]
    signature = stage_chain(app, ids[:2])
    tasks = signature.tasks
    stage_tasks = [stage.task for stage in STAGES]
    assert stage_tasks == ["eta.pre_evaluate", "eta.generate_with_alignment", "eta.post_evaluate"]
    assert [t.task for t in tasks] == stage_tasks
    assert tasks[0].args == ([str(i) for i in ids[:2]],) and tasks[1].args == () and tasks[2].args == ()
    assert [t.task for t in stage_chain(app, ids, start="generate").tasks] == stage_tasks[1:]
    routes = app.conf.task_routes
    assert [routes[t]["queue"] for t in stage_tasks] == ["eta.pre", "eta.generate", "eta.post"]
    assert app.conf.task_acks_late and not app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    limits = app.conf.task_annotations
    assert all(0 < limits[t]["soft_time_limit"] < limits[t]["time_limit"] for t in stage_tasks)


def test_message_ids_are_parsed_and_stored_text_is_nul_free():
    job = uuid.uuid4()
    assert parse_ids([str(job), "not-an-id", str(job)]) == [job]
    assert storable({"a": ["x\x00y"], "b": 1}) == {"a": ["x\ufffdy"], "b": 1}


def test_backoff_grows_and_is_capped():
    settings = Settings(eta_retry_backoff_max_s=10)
    assert all(1 <= backoff_s(0, settings) <= 2 for _ in range(20))
    assert all(5 <= backoff_s(10, settings) <= 10 for _ in range(20))


def test_the_demo_batch_has_forced_alignment_and_a_text_only_item():
    items = demo_items(None)
    assert sum(1 for i in items if i.get("params")) == 2
    assert [i["custom_id"] for i in items if i["image"] is None] == ["text-only"]
    many = demo_items(64)
    assert len(many) == 64 and len({i["custom_id"] for i in many}) == 64


def test_a_large_demo_batch_is_summarised_not_listed():
    from eta.commands.demo import SUMMARY_AFTER, _summary

    def job(i: int, reasons: list[str]) -> dict:
        return {"custom_id": f"item-{i}", "status": "succeeded", "error": None,
                "result": {"s_pre": i / 100, "s_post": -0.5, "s_post_final": 0.5, "aligned": bool(i % 2),
                           "flagged": bool(reasons), "flag_reasons": reasons, "response": "answer",
                           "tau_pre": 0.16, "tau_post": 0.06, "policy": "both", "vanilla_response": "v"}}

    jobs = [job(i, ["image_unsafe"] if i % 3 == 0 else []) for i in range(SUMMARY_AFTER * 5)]
    jobs.append({"custom_id": "broken", "status": "failed", "error": {"code": "image_unreadable"}, "result": None})
    flagged = [j for j in jobs if j["result"] and j["result"]["flagged"]]
    text = _summary(jobs, flagged)
    assert "100 succeeded, 1 failed (errors: 1 image_unreadable)" in text
    assert f"flagged:      {len(flagged)}; reasons: {len(flagged)} image_unsafe" in text
    assert "s_pre:        +0.000 .. +0.500 .. +0.990  (100 jobs)" in text
    assert "item-3" in text and "item-50" not in text  # a few examples, not every job
    assert len(text.splitlines()) < 30
