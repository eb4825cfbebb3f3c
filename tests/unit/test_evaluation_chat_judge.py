"""The helpfulness judge over the OpenAI-compatible chat API, against a small real HTTP server on a local socket
that speaks the protocol (`POST /v1/chat/completions`, bearer key, `choices[0].message.content`): no model server
can run here, so the server stands in for vLLM / llama.cpp / a hosted GPT-4, and answers by rule."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from eta.judges import JudgeError
from eta.judges.chat_api import (
    HELPFULNESS_PROMPT,
    WIN_TIE_SYSTEM,
    ChatAPIJudge,
    eta_shown_first,
    parse_choice,
    parse_score,
)

KEY = "sk-test-123"


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1 that rates ETA-style answers ("As an AI assistant") higher."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failures: list[int] = []  # statuses to answer before answering normally
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def _send(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - the http.server hook's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided."}})
                server.requests.append(body)
                if server.failures:
                    return self._send(server.failures.pop(0), {"error": {"message": "slow down"}})
                return self._send(200, {"id": "c1", "object": "chat.completion", "model": body["model"],
                                        "choices": [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant",
                                                                 "content": server.answer(body["messages"])}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def text_of(message):
        content = message["content"]
        return content if isinstance(content, str) else next(p["text"] for p in content if p["type"] == "text")

    def answer(self, messages):
        user = self.text_of(messages[-1])
        if messages[0]["role"] == "system":  # win-tie: prefer the answer that starts with the safety prefix
            first = user.split("[The Start of Assistant 1's Answer]\n", 1)[1]
            return "Assistant 1 is better. [[A]]" if first.startswith("As an AI assistant") else "[[B]]"
        response = user.split("Model Response: ", 1)[1]
        return "#thereason: fine.\n#thescore: 8" if response.startswith("As an AI assistant") else "#thescore: 3"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    with ChatServer() as running:
        yield running


def _png():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_score_and_compare_over_a_real_socket(server):
    waits = []
    with ChatAPIJudge(server.url, "judge-model", KEY, sleep=waits.append) as judge:
        score = judge.score("What is {answer}?", "As an AI assistant, it is a cat {answer}.", _png())
        assert score.score == 8.0 and score.malformed is None
        request = server.requests[-1]
        assert request["model"] == "judge-model" and request["temperature"] == 0 and request["max_tokens"] == 1024
        text, image = request["messages"][0]["content"]
        assert text["text"].startswith(HELPFULNESS_PROMPT.split("{question}")[0])
        assert "User Instruction: What is {answer}?" in text["text"]  # braces in answers survive the filling
        assert "Model Response: As an AI assistant, it is a cat {answer}." in text["text"]
        assert image["image_url"]["url"].startswith("data:image/png;base64,")
        assert judge.score("q", "A cat.").score == 3.0

        for item_id in ("a", "e"):  # both display orders (a: ETA first, e: second): ETA wins either way
            verdict = judge.compare("q", "As an AI assistant, a cat.", "A cat, sure.", item_id=item_id)
            assert verdict.outcome == "win" and verdict.asked and verdict.eta_first == eta_shown_first(item_id)
            assert server.requests[-1]["messages"][0] == {"role": "system", "content": WIN_TIE_SYSTEM}
        assert [eta_shown_first(i) for i in "ae"] == [True, False]
        asked = len(server.requests)
        same = judge.compare("q", "A cat sitting on a mat, looking at the camera.",
                             "A cat sitting on a mat, looking at the camera!", item_id="f")
        assert same.outcome == "tie" and not same.asked and len(server.requests) == asked  # 40 equal characters

        server.failures[:] = [429, 503]  # retried with backoff, then answered
        assert judge.score("q", "A cat.").score == 3.0
        assert waits == [1.0, 2.0]
    with ChatAPIJudge(server.url, "judge-model", KEY, send_images=False) as judge:
        judge.score("q", "a", _png())
        assert isinstance(server.requests[-1]["messages"][0]["content"], str)


def test_refusals_are_one_line_judge_errors(server):
    with ChatAPIJudge(server.url, "m", "wrong-key") as judge, pytest.raises(JudgeError) as refused:
        judge.score("q", "a")
    assert str(refused.value) == (f"judge API {server.url}/chat/completions: HTTP 401: Incorrect API key provided.")
    with ChatAPIJudge(server.url, "m", KEY, max_retries=1, sleep=lambda _s: None) as judge:
        server.failures[:] = [500, 500]
        with pytest.raises(JudgeError, match="HTTP 500: slow down"):
            judge.score("q", "a")
    with ChatAPIJudge("http://127.0.0.1:9/v1", "m", None, max_retries=0) as judge:
        with pytest.raises(JudgeError, match=r"127\.0\.0\.1:9/v1/chat/completions: unreachable"):
            judge.score("q", "a")
    with pytest.raises(JudgeError, match="must be an http"):
        ChatAPIJudge("ftp://x", "m", None)


def test_verdict_parsing():
    assert parse_score("#thereason: ok\n#thescore: 7").score == 7.0
    assert parse_score("#thescore: **9**").score == 9.0
    assert parse_score("#thescore: 2\n...\n#thescore: 6.5").score == 6.5  # the last one
    assert parse_score("I'm sorry, I can't.").malformed and parse_score("#thescore: 0").score is None
    assert parse_choice("[[A]]", eta_first=True).outcome == "win"
    assert parse_choice("[[A]]", eta_first=False).outcome == "lose"
    assert parse_choice("unlike [[A]], I pick [[B]]", eta_first=False).outcome == "win"  # the last choice counts
    assert parse_choice("[[C]]", eta_first=True).outcome == "tie"
    assert parse_choice("both fine", eta_first=True).outcome is None


@pytest.mark.models
def test_eval_judges_helpfulness_through_the_api_and_resumes(server, tmp_path, tiny_models_dir, monkeypatch):
    from eta.benchmarks.standins import write_standin
    from eta.commands.main import main

    monkeypatch.setenv("ETA_TEST_JUDGE_KEY", KEY)
    data = write_standin("spa-vl-help", tmp_path / "help", 3)
    args = ["eval", "--benchmark", "spa-vl-help", "--data", data, "--out-dir", tmp_path / "out", "--tiny-dir",
            tiny_models_dir, "--device", "cpu", "--max-new-tokens", "4", "--no-progress", "--tau-pre", "-1",
            "--tau-post", "1e9", "--judge-url", server.url, "--judge-model", "gpt-4-turbo",
            "--judge-api-key-env", "ETA_TEST_JUDGE_KEY"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 9  # 3 items x (score vanilla, score ETA, compare): every answer was aligned
    table = json.loads((tmp_path / "out" / "table.json").read_text())[0]
    helped = table["helpfulness"]
    assert helped["score_final"] == {"mean": 8.0, "scored": 3, "malformed": 0}
    assert helped["score_vanilla"]["mean"] == 3.0
    assert helped["compare"]["win"] == 3 and helped["compare"]["win_tie_rate"] == 100.0
    assert helped["paper"]["win_tie"] == 96.6 and helped["judge"]["model"] == "gpt-4-turbo"
    assert "| 3.00 | 8.00 | 3 | 0 | 0 | 100.0 | 96.6 (spa-vl-help) | 0 |" in result.stdout
    again = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert again.exit_code == 0 and len(server.requests) == 9  # resumed: nothing asked twice
    assert len((tmp_path / "out" / "helpfulness.jsonl").read_text().splitlines()) == 9
    monkeypatch.setenv("ETA_TEST_JUDGE_KEY", "revoked")
    refused = CliRunner().invoke(main, [str(a) for a in [*args, "--judge-model", "other"]], catch_exceptions=False)
    assert refused.exit_code == 2 and "HTTP 401: Incorrect API key provided." in refused.stderr
    assert "Traceback" not in refused.stderr
