"""`eta submit` with an untrusted manifest or folder, and with one image file (issue 26, items 3 and 9).

The client talks to a small recording HTTP server: what it receives is the oracle for "nothing was uploaded"
and for what a submitted batch carried (the multipart body is parsed with the standard library's email parser,
not with the client's own code).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from eta.commands.main import main


@dataclass
class Upload:
    manifest: list[dict]
    files: dict[str, bytes]


@dataclass
class RecordingServer:
    url: str
    uploads: list[Upload] = field(default_factory=list)
    requests: int = 0


def _parse_multipart(content_type: str, body: bytes) -> Upload:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    manifest: list[dict] = []
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if name == "manifest":
            manifest = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        elif name == "files":
            files[part.get_filename()] = data
    return Upload(manifest, files)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    record = RecordingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the standard library's name
            record.requests += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            upload = _parse_multipart(self.headers["Content-Type"], body)
            record.uploads.append(upload)
            document = {"id": "b1", "status": "validating", "total": len(upload.manifest), "submission": {}}
            payload = json.dumps(document).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        httpd.shutdown()
        httpd.server_close()


def _submit(server: RecordingServer, *args: str):
    env = {"ETA_URL": server.url, "ETA_API_KEY": "eta_test", "ETA_PROGRESS": "0"}
    return CliRunner().invoke(main, ["submit", *args, "--retries", "0"], env=env)


def _jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(out, format="JPEG")
    path.write_bytes(out.getvalue())
    return out.getvalue()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the manifest's folder that must never be uploaded."""
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "secret.txt"
    path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return path


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "a" / "b" / "inbox"
    folder.mkdir(parents=True)
    _jpeg(folder / "ok.jpg")
    return folder


def _manifest(folder: Path, *images: str) -> Path:
    lines = [{"custom_id": "good", "prompt": "p", "image": "ok.jpg"}]
    lines += [{"custom_id": f"bad{n}", "prompt": "p", "image": image} for n, image in enumerate(images)]
    path = folder / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlinked_folder"])
def test_a_manifest_path_out_of_its_folder_is_refused_and_nothing_is_uploaded(server, inbox, secret, how):
    if how == "absolute":
        image = str(secret)
    elif how == "dotdot":
        image = os.path.relpath(secret, inbox)
        assert image.startswith("../")
    elif how == "symlink":
        (inbox / "innocent.jpg").symlink_to(secret)
        image = "innocent.jpg"
    else:
        (inbox / "pics").symlink_to(secret.parent, target_is_directory=True)
        image = "pics/secret.txt"
    result = _submit(server, str(_manifest(inbox, image)))
    assert result.exit_code == 2, result.output
    assert f"{inbox / 'batch.jsonl'}:2 (custom_id 'bad0')" in result.output
    assert "outside" in result.output and "--allow-outside-paths" in result.output
    assert "Traceback" not in result.output
    assert server.requests == 0


def test_every_refused_item_is_named(server, inbox, secret):
    result = _submit(server, str(_manifest(inbox, "/etc/passwd", "../../../etc/hostname")))
    assert result.exit_code == 2
    assert "bad0" in result.output and "bad1" in result.output and "2 image path(s) refused" in result.output
    assert server.requests == 0


def test_the_explicit_flag_allows_paths_outside(server, inbox, secret):
    result = _submit(server, str(_manifest(inbox, str(secret))), "--allow-outside-paths")
    assert result.exit_code == 0, result.output
    (upload,) = server.uploads
    assert [line["custom_id"] for line in upload.manifest] == ["good", "bad0"]
    assert secret.read_bytes() in upload.files.values()


def test_paths_inside_the_folder_still_work_through_subfolders_dots_and_inner_symlinks(server, inbox):
    (inbox / "sub").mkdir()
    photo = _jpeg(inbox / "sub" / "p.jpg", (1, 2, 3))
    (inbox / "alias.jpg").symlink_to(inbox / "sub" / "p.jpg")
    result = _submit(server, str(_manifest(inbox, "sub/../sub/p.jpg", "alias.jpg", str(inbox / "ok.jpg"))))
    assert result.exit_code == 0, result.output
    (upload,) = server.uploads
    assert len(upload.manifest) == 4 and photo in upload.files.values()


def test_a_folder_with_a_symlink_out_is_refused_too(server, inbox, secret):
    (inbox / "leak.png").symlink_to(secret)
    result = _submit(server, str(inbox), "--prompt", "?")
    assert result.exit_code == 2 and "leak.png" in result.output and "outside" in result.output
    assert server.requests == 0


def test_one_image_file_is_a_one_item_batch(server, tmp_path):
    photo = _jpeg(tmp_path / "photo.jpg")
    result = _submit(server, str(tmp_path / "photo.jpg"), "--prompt", "What is in this picture?")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "b1" and "utf-8" not in result.output
    (upload,) = server.uploads
    (line,) = upload.manifest
    assert line["custom_id"] == "photo.jpg" and line["prompt"] == "What is in this picture?"
    assert upload.files == {line["image"]: photo}


def test_one_image_is_recognised_by_its_bytes_whatever_its_name(server, tmp_path):
    photo = _jpeg(tmp_path / "IMG_0001")
    result = _submit(server, str(tmp_path / "IMG_0001"), "--prompt", "?")
    assert result.exit_code == 0, result.output
    assert list(server.uploads[0].files.values()) == [photo]


def test_one_image_without_a_prompt_is_a_usage_error(server, tmp_path):
    _jpeg(tmp_path / "photo.jpg")
    result = _submit(server, str(tmp_path / "photo.jpg"))
    assert result.exit_code == 2 and "--prompt" in result.output
    assert server.requests == 0
