"""The client commands' own checks, before anything is sent (no server)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from eta.commands.client import items_from_folder, items_from_manifest, write_results
from eta.commands.main import main

ENV = {"ETA_URL": "http://127.0.0.1:9", "ETA_API_KEY": "eta_test"}


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=ENV if env is None else env)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "b.png").write_bytes(b"png")
    (tmp_path / "a.JPG").write_bytes(b"jpg")
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.webp").write_bytes(b"webp")
    return tmp_path


def test_a_folder_gives_one_item_per_image_named_by_its_path(folder):
    assert [i.custom_id for i in items_from_folder(folder, prompt="?", recursive=False)] == ["a.JPG", "b.png"]
    assert [i.custom_id for i in items_from_folder(folder, prompt="?", recursive=True)] == ["a.JPG", "b.png",
                                                                                           "sub/c.webp"]


def test_a_manifest_resolves_images_next_to_it_and_names_its_lines(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"custom_id": "a", "prompt": "p", "image": "x.jpg"}\n\n{"custom_id": "t"}\n')
    items, sources = items_from_manifest(manifest, default_prompt="default")
    assert items[0].image == tmp_path / "x.jpg" and items[1].prompt == "default"
    assert sources == [f"{manifest}:1", f"{manifest}:3"]


def test_usage_errors_exit_2_before_anything_is_sent(folder, tmp_path):
    assert _run("submit", str(folder)).exit_code == 2  # a folder needs --prompt
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _run("submit", str(empty), "--prompt", "?").output
    assert _run("submit", str(folder), "--prompt", "?", "--set", "novalue").exit_code == 2
    assert _run("submit", str(folder), "--prompt", "?", "--params", "[1]").exit_code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "x", "imgae": "typo.jpg"}\n')
    result = _run("submit", str(bad))
    assert result.exit_code == 2 and f"{bad}:2" in result.output and "imgae" in result.output
    no_key = _run("status", "b1", env={"ETA_URL": "http://127.0.0.1:9", "ETA_API_KEY": ""})
    assert no_key.exit_code == 2 and "ETA_API_KEY" in no_key.output


def test_an_unreachable_server_is_one_line_and_exit_1():
    result = _run("status", "b1", "--retries", "1")
    assert result.exit_code == 1 and "after 2 attempt(s): ConnectError" in result.output
    assert "Traceback" not in result.output


def test_results_as_csv_flatten_scores_and_errors():
    jobs = [{"id": "j1", "custom_id": "a", "status": "succeeded", "seed": 1, "error": None,
             "result": {"flagged": True, "aligned": False, "s_pre": 0.2, "flag_reasons": ["pre", "post"],
                        "response": "line one\nline, two"}},
            {"id": "j2", "custom_id": "b", "status": "failed", "result": None,
             "error": {"code": "stage_timeout", "message": "too slow"}}]
    out = io.StringIO()
    assert write_results(jobs, out, "csv") == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[0]["flag_reasons"] == "pre;post" and rows[0]["response"] == "line one\nline, two"
    assert rows[1]["error_code"] == "stage_timeout" and rows[1]["s_pre"] == ""
    out = io.StringIO()
    write_results(jobs, out, "jsonl")
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["j1", "j2"]


def test_results_as_csv_defuse_spreadsheet_formulas_like_the_servers_export():
    jobs = [{"id": "j1", "custom_id": "=HYPERLINK(\"http://x\")", "status": "succeeded", "seed": 1, "error": None,
             "prompt": "+1+1", "result": {"flagged": True, "aligned": True, "s_pre": -0.25,
                                          "response": "@SUM(A1:A9)", "flag_reasons": ["pre"]}}]
    out = io.StringIO()
    write_results(jobs, out, "csv")
    row = next(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["custom_id"] == "'=HYPERLINK(\"http://x\")" and row["response"] == "'@SUM(A1:A9)"
    assert row["s_pre"] == "-0.25"  # numbers are numbers, not text to defuse


def test_a_manifest_line_may_give_its_image_by_url_and_name_a_preset(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"custom_id": "a", "prompt": "p", "image_url": "https://bucket.test/a.jpg", '
                        '"preset": "nightly"}\n')
    [item], _ = items_from_manifest(manifest, default_prompt=None)
    assert (item.image_url, item.preset, item.image) == ("https://bucket.test/a.jpg", "nightly", None)
