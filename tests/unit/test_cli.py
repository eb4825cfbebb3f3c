from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from eta.commands.main import main

pytestmark = pytest.mark.models


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_run_json_on_a_sample(tiny_models_dir, samples_dir):
    out = _run("run", "--image", str(samples_dir / "waterview.jpg"), "--prompt", "What is in this picture?",
               "--json", "--tiny-dir", str(tiny_models_dir), "--max-new-tokens", "16", "--seed", "1")
    assert out.exit_code == 0, out.output
    r = json.loads(out.output)
    for key in ("s_pre", "s_post", "pre_unsafe", "post_unsafe", "aligned", "response", "vanilla_response",
                "s_post_final", "trace", "seed", "fingerprint", "timings_ms"):
        assert key in r
    assert isinstance(r["s_pre"], float) and r["seed"] == 1


def test_forced_thresholds_align_and_human_output(tiny_models_dir, samples_dir):
    out = _run("run", "--image", str(samples_dir / "harm_example.png"), "--prompt", "What is this?",
               "--tau-pre", "-1", "--tau-post", "1e9", "--tiny-dir", str(tiny_models_dir),
               "--max-new-tokens", "16")
    assert out.exit_code == 0, out.output
    assert "ALIGN - both evaluators flagged" in out.output
    assert "answer:\nAs an AI assistant" in out.output


def test_text_only(tiny_models_dir):
    out = _run("run", "--prompt", "hello", "--json", "--tiny-dir", str(tiny_models_dir), "--max-new-tokens", "8")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["s_pre"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "pyproject.toml", "--prompt", "hi"], "not an image"),
        (["--image", "/does/not/exist.png", "--prompt", "hi"], "No such file"),
        (["--prompt", "hi", "--tau-pre", "nan"], "tau_pre: must be finite"),
        (["--prompt", "hi", "--num-candidates", "0"], "num_candidates: must be >= 1"),
        (["--prompt", "   "], "--prompt must not be empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    # A real process: exit status and stderr exactly as a shell user sees them.
    proc = subprocess.run([sys.executable, "-m", "eta", "run", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_serve_runs_gunicorn_threaded_with_two_malloc_arenas(monkeypatch, tmp_path):
    """`eta serve` replaces itself with gunicorn (gthread, the given workers and threads) and caps glibc's malloc
    arenas unless the operator set a value."""
    import os

    from click.testing import CliRunner

    from eta.commands import serve as serve_command

    calls = []
    monkeypatch.setattr(serve_command.os, "execv", lambda path, argv: calls.append((argv, dict(os.environ))))
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("ETA_DATA_DIR", str(tmp_path))
    from eta.settings import get_settings

    get_settings.cache_clear()
    from eta.commands.main import main

    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    result = CliRunner().invoke(main, ["serve", "--workers", "3"])
    assert result.exit_code == 0, result.output
    argv, env = calls[-1]
    assert argv[argv.index("--workers") + 1] == "3" and argv[argv.index("--threads") + 1] == "4"
    # gthread, answering gunicorn's own refusals with problem documents (api.server_errors)
    assert argv[argv.index("--worker-class") + 1] == "api.server_errors.ProblemThreadWorker"
    assert env["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    CliRunner().invoke(main, ["serve"])
    assert calls[-1][1]["MALLOC_ARENA_MAX"] == "8"
    get_settings.cache_clear()
