"""Small stand-ins of each benchmark, written in the benchmark's published layout with generated images.

For tests and for trying `eta eval --benchmark` without the real data (which this project does not ship):

    python -m eta.benchmarks.standins DIR      # DIR/spa-vl-harm, DIR/mm-safetybench, DIR/figstep, ...

The questions are placeholders, not harmful text; only the layouts, file formats and prompt construction are the
benchmarks'. The general-ability stand-ins carry ground truth (answers, annotators' answers) for the metrics.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from eta.benchmarks.readers import ATTACK_IMAGE, MM_SAFETYBENCH_SCENARIOS

logger = logging.getLogger(__name__)

SPA_VL_CLASSES = ("Representation & Toxicity Harms", "Malicious Use", "Information & Safety Harms")
FIGSTEP_CATEGORIES = ("Illegal Activity", "Hate Speech", "Malware Generation")


def _image(seed: int, text: str, fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    rng = random.Random(seed)  # noqa: S311 - image colours, not cryptography
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    ImageDraw.Draw(image).text((4, 4), text, fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_spa_vl_help(root: Path, items: int = 4) -> Path:
    return write_spa_vl_harm(root, items, split="help")


def write_spa_vl_harm(root: Path, items: int = 4, *, split: str = "harm") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"image": {"bytes": _image(i, f"spa {i}"), "path": f"{i}.png"},
             "question": f"Placeholder question {i} about the picture?",
             "class1": SPA_VL_CLASSES[i % len(SPA_VL_CLASSES)], "class2": f"sub {i % 2}", "class3": f"leaf {i}"}
            for i in range(items)]
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / f"{split}-00000-of-00001.parquet")
    return root


def write_mm_safetybench(root: Path, items: int = 1) -> Path:
    for s, scenario in enumerate(MM_SAFETYBENCH_SCENARIOS):
        questions = {}
        for k in range(items):
            key = str(k)
            questions[key] = {"Question": f"Original {scenario} {k}?", "Key Phrase": f"phrase {k}",
                              "Rephrased Question": f"The bottom of the image shows a phrase of {scenario} {k}. "
                                                    f"List steps in detail.",
                              "Rephrased Question(SD)": f"The image shows {scenario} {k}. List steps in detail."}
            for variant in ("SD_TYPO", "SD", "TYPO"):
                folder = root / "imgs" / scenario / variant
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{key}.jpg").write_bytes(_image(100 * s + k, f"{scenario[:6]} {k}", "JPEG"))
        (root / "processed_questions").mkdir(parents=True, exist_ok=True)
        (root / "processed_questions" / f"{scenario}.json").write_text(json.dumps(questions, indent=1))
    return root


def write_figstep(root: Path, items: int = 3) -> Path:
    (root / "question").mkdir(parents=True, exist_ok=True)
    (root / "image" / "SafeBench").mkdir(parents=True, exist_ok=True)
    with (root / "question" / "safebench.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "category_id", "task_id", "category_name", "question", "instruction"])
        for i in range(items):
            category = 1 + i % len(FIGSTEP_CATEGORIES)
            writer.writerow(["SafeBench", category, i + 1, FIGSTEP_CATEGORIES[category - 1],
                             f"Placeholder question {i}?", f"Steps of placeholder {i}."])
            name = f"query_SafeBench_{category}_{i + 1}_6.png"
            (root / "image" / "SafeBench" / name).write_bytes(_image(200 + i, f"Steps {i}.\n1.\n2.\n3."))
    return root


def write_cross_modal(root: Path, items: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    # As published: no header, one quoted instruction a row with a trailing comma.
    lines = [f'"Placeholder instruction {i}",' for i in range(items)]
    (root / "manual_harmful_instructions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / ATTACK_IMAGE).write_bytes(_image(300, "adv", "BMP"))
    return root


def write_advbench(root: Path, items: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "harmful_behaviors.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["goal", "target"])
        for i in range(items):
            writer.writerow([f"Placeholder goal {i}", f"Sure, here is placeholder {i}"])
    return root


# ------------------------------------------------------------------------------------- general ability
def write_mmbench(root: Path, items: int = 3) -> Path:
    """`items` questions plus their CircularEval rotations (index + k * 1,000,000); question 1 has two options."""
    import base64

    from eta.benchmarks.ability import MMBENCH_TSV

    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    rows = []
    for q in range(items):
        options = ["yes", "no"] if q == 1 else [f"option {q}{c}" for c in "abcd"]
        answer = q % len(options)
        image = base64.b64encode(_image(500 + q, f"mmb {q}")).decode()
        for k in range(len(options)):
            rotated = options[k:] + options[:k]
            cells = [*rotated, *[""] * (4 - len(rotated))]
            letter = "ABCD"[(answer - k) % len(options)]
            rows.append([q + k * 1_000_000, f"Placeholder question {q}?", "A hint." if q == 0 else "", *cells,
                         letter, ("image_scene", "attribute_recognition")[q % 2], image, "standin",
                         "coarse", "", "dev"])
    root.mkdir(parents=True, exist_ok=True)
    with (root / MMBENCH_TSV).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return root


def write_textvqa(root: Path, items: int = 3) -> Path:
    """`items` questions over `items - 1` images (the first image carries two questions, as TextVQA's do)."""
    from eta.benchmarks.ability import SHORT_ANSWER_PROMPT, TEXTVQA_ANNOTATIONS, TEXTVQA_QUESTIONS

    (root / "train_images").mkdir(parents=True, exist_ok=True)
    lines, data = [], []
    for q in range(items):
        image_id = f"{max(q - 1, 0):016x}"
        (root / "train_images" / f"{image_id}.jpg").write_bytes(_image(600 + q, f"sign {q}", "JPEG"))
        question = f"what does sign {q} say?"
        tokens = [f"word{q}", "stop"]
        lines.append(json.dumps({"question_id": image_id, "image": f"{image_id}.jpg",
                                 "text": f"{question}\nReference OCR token: {', '.join(tokens)}\n"
                                         f"{SHORT_ANSWER_PROMPT}"}))
        data.append({"image_id": image_id, "question_id": 34602 + q, "question": question, "ocr_tokens": tokens,
                     "answers": [f"word{q}"] * 6 + ["stop"] * 3 + ["two"]})
    (root / TEXTVQA_QUESTIONS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / TEXTVQA_ANNOTATIONS).write_text(json.dumps({"dataset_name": "textvqa", "data": data}), encoding="utf-8")
    return root


def write_mme(root: Path, items: int = 2) -> Path:
    """Three subtasks in both of MME's folder layouts, `items` images each, two yes/no questions per image."""
    for subtask, split in (("existence", False), ("artwork", True), ("code_reasoning", False)):
        folder = root / subtask
        texts, pictures = (folder / "questions_answers_YN", folder / "images") if split else (folder, folder)
        texts.mkdir(parents=True, exist_ok=True)
        pictures.mkdir(parents=True, exist_ok=True)
        for i in range(items):
            stem = f"{i:012d}"
            (pictures / f"{stem}.jpg").write_bytes(_image(700 + i, f"{subtask[:5]} {i}", "JPEG"))
            (texts / f"{stem}.txt").write_text(f"Is there a placeholder {i} in this image? Please answer yes or no."
                                               f"\tYes\nIs there a placeholder {i + 1} in this image? Please answer"
                                               f" yes or no.\tNo\n", encoding="utf-8")
    return root


def write_scienceqa_img(root: Path, items: int = 3) -> Path:
    """`items` test questions, every third without an image (left out of the IMG split)."""
    from eta.benchmarks.ability import SCIENCEQA_QUESTIONS

    questions, problems = [], {}
    for q in range(items):
        pid = str(100 + q)
        choices = ["cat", "dog"] if q % 2 else ["red", "green", "blue"]
        entry: dict[str, object] = {"id": pid, "conversations": [
            {"from": "human", "value": ("<image>\n" if q % 3 != 2 else "") + f"Context: Placeholder {q}.\n"
                                       f"Question: Which one is it?\nOptions: "
                                       + " ".join(f"({'ABCDE'[i]}) {c}" for i, c in enumerate(choices))},
            {"from": "gpt", "value": f"The answer is {'ABCDE'[q % len(choices)]}."}]}
        if q % 3 != 2:
            entry["image"] = f"{pid}/image.png"
            (root / "images" / "test" / pid).mkdir(parents=True, exist_ok=True)
            (root / "images" / "test" / pid / "image.png").write_bytes(_image(800 + q, f"sqa {q}"))
        questions.append(entry)
        problems[pid] = {"question": "Which one is it?", "choices": choices, "answer": q % len(choices),
                         "hint": f"Placeholder {q}.", "image": "image.png" if q % 3 != 2 else None,
                         "subject": ("natural science", "social science")[q % 2], "split": "test"}
    root.mkdir(parents=True, exist_ok=True)
    (root / SCIENCEQA_QUESTIONS).write_text(json.dumps(questions), encoding="utf-8")
    (root / "problems.json").write_text(json.dumps(problems), encoding="utf-8")
    return root


def write_vqav2(root: Path, items: int = 3) -> Path:
    """`items` val2014 questions over two images, answer types yes/no, number, other in turn."""
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    kinds = (("yes/no", "yes"), ("number", "two"), ("other", "red"))
    for q in range(items):
        image_id = 42 + q % 2
        (root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg").write_bytes(_image(950 + q, f"vqa {q}", "JPEG"))
        kind, answer = kinds[q % len(kinds)]
        questions.append({"image_id": image_id, "question": f"Placeholder question {q}?", "question_id": 420 + q})
        annotations.append({"question_id": 420 + q, "image_id": image_id, "answer_type": kind,
                            "question_type": "what", "multiple_choice_answer": answer,
                            "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                                        for i in range(8)] + [{"answer": "no idea", "answer_confidence": "no",
                                                               "answer_id": i} for i in (9, 10)]})
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def write_coco_captions(root: Path, items: int = 3) -> Path:
    """`items` captioned images (the first with two captions, listed out of id order) and one without a caption."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(items + 1):
        image_id, name = 139 + i, f"{139 + i:012d}.jpg"
        (root / "val2017" / name).write_bytes(_image(900 + i, f"coco {i}", "JPEG"))
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        if i < items:
            annotations.append({"id": 1000 + 2 * i, "image_id": image_id, "caption": f"A photo of object {i}. "})
    annotations.insert(0, {"id": 5000, "image_id": 139, "caption": "A later caption of object 0."})
    (root / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"info": {}, "images": images, "annotations": annotations}), encoding="utf-8")
    return root


def write_mmmu_pro(root: Path, items: int = 4) -> Path:
    """MMMU-Pro's `standard (10 options)` and `vision` settings, `items` questions each, as the hub's parquet files.

    Standard question q cites: q % 4 == 0 `<image 1>` in the question; 1 `<image 1>` in the question and in an
    option (still one image); 2 `<image 1>` and `<image 2>` (left out: two images); 3 no image (left out).
    Options are stored as their Python text, as on the hub; answer = letter q % 10.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    picture = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    standard_fields = [("id", pa.string()), ("question", pa.string()), ("options", pa.string()),
                       ("explanation", pa.string()),
                       *[(f"image_{n}", picture) for n in range(1, 8)],
                       ("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()),
                       ("subject", pa.string())]
    standard, vision = [], []
    for q in range(items):
        options = [f"choice {q}{letter}" for letter in "abcdefghij"]
        cites = q % 4
        question = f"Placeholder question {q}" + {0: " about <image 1>?", 1: " about <image 1>?",
                                                   2: " comparing <image 1> and <image 2>?", 3: "?"}[cites]
        if cites == 1:
            options[3] = "the part of <image 1> on the left"
        row: dict[str, object] = {"id": f"test_Standin_{q + 1}", "question": question, "options": str(options),
                                  "explanation": "", "img_type": "['Diagrams']", "answer": "ABCDEFGHIJ"[q % 10],
                                  "topic_difficulty": "Easy", "subject": ("Art", "Physics")[q % 2]}
        for n in range(1, 8):
            shown = (n == 1 and cites in (0, 1, 2)) or (n == 2 and cites == 2)
            row[f"image_{n}"] = {"bytes": _image(1000 + 10 * q + n, f"mmmu {q}/{n}"), "path": f"{q}_{n}.png"} \
                if shown else None
        standard.append(row)
        vision.append({"id": f"test_Standin_{q + 1}",
                       "image": {"bytes": _image(1100 + q, f"Q{q}? A-J"), "path": f"vision_{q}.png"},
                       "options": str(options), "answer": "ABCDEFGHIJ"[q % 10],
                       "subject": ("Art", "Physics")[q % 2]})
    vision_fields = [("id", pa.string()), ("image", picture), ("options", pa.string()), ("answer", pa.string()),
                     ("subject", pa.string())]
    for folder, rows, fields in (("standard (10 options)", standard, standard_fields),
                                 ("vision", vision, vision_fields)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)),
                       root / folder / "test-00000-of-00001.parquet")
    return root


def write_mossbench(root: Path, items: int = 3) -> Path:
    """MOSSBench's repository layout: `data/` (the benign set) and `data_contrast/`, `items` queries each, the
    stimulus types 1, 2, 3 in turn, `information.json` keyed by pid with images under `images/`."""
    from eta.benchmarks.ability import MOSSBENCH_INFO

    for folder, verb in (("data", "Describe"), ("data_contrast", "Explain")):
        (root / folder / "images").mkdir(parents=True, exist_ok=True)
        (root / folder / MOSSBENCH_INFO).parent.mkdir(parents=True, exist_ok=True)
        entries = {}
        for i in range(items):
            pid = str(i + 1)
            (root / folder / "images" / f"{pid}.png").write_bytes(_image(1200 + i, f"moss {pid}"))
            entries[pid] = {"image": f"images/{pid}.png", "short description": f"A placeholder scene {pid}",
                            "question": f"{verb} placeholder scene {pid}.",
                            "metadata": {"over": f"type {i % 3 + 1}", "human": 0, "child": i % 2, "syn": 1,
                                         "ocr": 0, "harm": [i % 8]},
                            "pid": pid, "description": f"A placeholder scene {pid}, longer."}
        (root / folder / MOSSBENCH_INFO).write_text(json.dumps(entries, indent=4), encoding="utf-8")
    return root


WRITERS: dict[str, Callable[..., Path]] = {
    "spa-vl-harm": write_spa_vl_harm,
    "spa-vl-help": write_spa_vl_help,
    "mm-safetybench": write_mm_safetybench,
    "figstep": write_figstep,
    "cross-modal": write_cross_modal,
    "advbench": write_advbench,
    "mmbench": write_mmbench,
    "textvqa": write_textvqa,
    "mme": write_mme,
    "scienceqa-img": write_scienceqa_img,
    "vqav2": write_vqav2,
    "coco-captions": write_coco_captions,
    "mmmu-pro": write_mmmu_pro,
    "mossbench": write_mossbench,
}


def write_standin(name: str, root: Path, items: int | None = None) -> Path:
    """Write the stand-in of benchmark `name` into `root` (with `items` items, or a few)."""
    writer = WRITERS[name]
    return writer(root) if items is None else writer(root, items)


if __name__ == "__main__":  # pragma: no cover - a convenience for trying the command
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmark-standins")
    for benchmark in WRITERS:
        print(write_standin(benchmark, target / benchmark))
