"""`eta submit` of one image, and images past intake's decode budget, through a live server and worker
(issue 26, items 2 and 9)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from tests.integration.client.conftest import FAST_PARAMS, LiveStack

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]


def _set_params(params: dict) -> list[str]:
    return [arg for name, value in params.items() for arg in ("--set", f"{name}={json.dumps(value)}")]


def test_one_photo_is_a_one_item_batch_that_completes(live_stack: LiveStack, image_folder):
    photo = image_folder / "waterview.jpg"
    submitted = live_stack.eta("submit", str(photo), "--prompt", "What is in this picture?", "--wait",
                               "--timeout", "120", "--json", *_set_params(FAST_PARAMS))
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "completed" and batch["total"] == 1, batch
    [job] = [json.loads(line) for line in live_stack.eta("results", batch["id"]).stdout.splitlines()]
    assert job["custom_id"] == "waterview.jpg" and job["status"] == "succeeded"
    assert job["result"]["s_pre"] is not None  # the image reached the models


def _png(width: int, height: int, shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 90, 30)).save(out, "PNG")
    return out.getvalue()


def _with_corrupt_pixels(data: bytes) -> bytes:
    """The PNG with its compressed pixels replaced by junk under valid checksums: the header and the chunk
    structure check out; only decoding the pixels finds the fault."""
    out, position = [data[:8]], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IDAT":
            body = b"\x78\x9c" + bytes(range(256)) * (len(body) // 256 + 1)
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        position += 12 + length
    return b"".join(out)


def test_an_image_past_the_intake_budget_is_decoded_in_the_worker(live_stack: LiveStack, tmp_path):
    # The first 3000x3000 image takes 9 M of the request's 16 M-pixel budget; the next ones only get the header
    # and structure checks at intake. The broken one is accepted, and fails in the worker, alone.
    (tmp_path / "a.png").write_bytes(_png(3000, 3000, 1))
    (tmp_path / "b.png").write_bytes(_png(3000, 3000, 2))
    (tmp_path / "broken.png").write_bytes(_with_corrupt_pixels(_png(3000, 3000, 3)))
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text("".join(json.dumps({"custom_id": name, "prompt": "What is it?", "image": f"{name}.png"})
                                + "\n" for name in ("a", "b", "broken")))
    submitted = live_stack.eta("submit", str(manifest), "--wait", "--timeout", "180", "--json",
                               *_set_params(FAST_PARAMS), check=False)
    assert submitted.returncode == 0, submitted.stderr
    batch = json.loads(submitted.stdout)
    results = live_stack.eta("results", batch["id"]).stdout.splitlines()
    jobs = {job["custom_id"]: job for job in map(json.loads, results)}
    assert jobs["a"]["status"] == jobs["b"]["status"] == "succeeded"
    assert jobs["broken"]["status"] == "failed" and jobs["broken"]["error"]["code"] == "image_unreadable"
