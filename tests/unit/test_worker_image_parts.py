"""A worker decodes a chunk's images a part at a time, within `ImageLimits.worker_decode_pixels` (issue 26,
item 2: a chunk of 32 images of 40 M pixels held 6 GB in one worker). No services: the runner's claim, compute
and record are stood in for; its decoding and its loop over groups are the real ones."""

from __future__ import annotations

import io
import uuid

from PIL import Image

from eta.config import ETAConfig
from eta.images import ImageLimits, header_pixels, split_by_pixels
from workers.runner import StageRunner
from workers.stage_types import Work


def _png(side: int, shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (shade, 0, 0)).save(out, "PNG")
    return out.getvalue()


class _Step:
    groups_by_batch_size = True

    def groups(self, work, batch_size):
        for start in range(0, len(work), batch_size):
            yield list(work[start:start + batch_size])


def _runner(work: list[Work], budget: int):
    runner = object.__new__(StageRunner)  # the parts a stage call needs besides the models and the database
    runner.step = _Step()
    runner.batch_size = 32
    runner.progress = None
    runner._failures = {}
    decoded_at_once: list[int] = []
    computed: list[uuid.UUID] = []

    def compute(group):
        decoded_at_once.append(sum(item.image is not None for item in work))
        assert all(item.image is not None and item.image.size == (40, 40) for item in group)
        computed.extend(item.job_id for item in group)
        return [(item, None) for item in group]

    runner.claim = lambda job_ids: work
    runner.compute = compute
    runner.record = lambda outputs, elapsed_ms: None
    runner.report_model_calls = lambda: None
    runner.flush_failures = lambda: None
    runner.image_limits = lambda: ImageLimits(worker_decode_pixels=budget)
    return runner, decoded_at_once, computed


def _work(count: int) -> list[Work]:
    return [Work(job_id=uuid.uuid4(), prompt="p", seed=n, config=ETAConfig(), params_key="{}",
                 image_bytes=_png(40, n)) for n in range(count)]


def test_a_chunk_of_large_images_is_decoded_a_part_at_a_time():
    work = _work(10)
    runner, decoded_at_once, computed = _runner(work, budget=3 * 1600)  # three 40x40 images a part
    runner.run([w.job_id for w in work])
    assert computed == [w.job_id for w in work]  # every job, in order
    assert decoded_at_once == [3, 3, 3, 1]
    assert all(w.image is None for w in work)  # nothing held once the chunk is done


def test_a_chunk_of_ordinary_images_stays_one_part():
    work = _work(10)
    runner, decoded_at_once, _ = _runner(work, budget=ImageLimits().worker_decode_pixels)
    runner.run([w.job_id for w in work])
    assert decoded_at_once == [10]


def test_parts_follow_the_order_and_an_oversized_item_goes_alone():
    sizes = [5, 5, 20, 1, 1, 9, 2]
    assert list(split_by_pixels(sizes, lambda n: n, 10)) == [[5, 5], [20], [1, 1], [9], [2]]
    assert header_pixels(_png(40, 1)) == 1600 and header_pixels(b"junk") == 0 and header_pixels(None) == 0
