"""Readers of the general-ability benchmarks of the ETA paper, in the layouts LLaVA's evaluation kit uses.

The paper runs them through LLaVA's kit (`scripts/v1_5/eval/*.sh`); the prompts are that kit's. Layouts (DIR is
what `--data` names):

- `mmbench`: MMBench's dev TSV (`DIR/mmbench_dev_20230712.tsv`, or another `mmbench_dev*.tsv`, or the file named
  by `--subset`): columns `index, question, hint, A, B, C, D, answer, category, image` (base64), two to four
  options (the first empty one ends them). The TSV already holds CircularEval's rotated copies: row
  `index + k * 1,000,000` is question `index` with its options rotated by k. Prompt: the hint (if any) and the
  question, one line per option `A. text`, then `Answer with the option's letter from the given choices
  directly.` Category: `category`.
- `textvqa`: LLaVA's question file `DIR/llava_textvqa_val_v051_ocr.jsonl` (`question_id`, which is the *image*
  id: 3,166 images carry 5,000 questions; `image`; `text`: the question, `Reference OCR token: ...` and the short
  answer instruction), the official annotations `DIR/TextVQA_0.5.1_val.json` (`data`: `image_id`, `question`,
  `question_id`, ten `answers`, `ocr_tokens`) and the images under `DIR/train_images/`. Each question is matched
  to its annotation on the image id and the question text, as LLaVA's scorer does. Prompt: `text` as given.
- `mme`: MME's release (`DIR` or `DIR/MME_Benchmark_release_version`): one folder per subtask; each image has a
  `.txt` of `question<TAB>Yes|No` lines (two per image), beside it or in `questions_answers_YN/` with the images
  in `images/`. Prompt: the question, then `Answer the question using a single word or phrase.` Category: subtask.
- `vqav2`: the official `DIR/v2_OpenEnded_mscoco_val2014_questions.json`, `DIR/v2_mscoco_val2014_annotations.json`
  and `DIR/val2014/COCO_val2014_<image id, 12 digits>.jpg` (`--subset` another split with answers). Prompt: the
  question and the short-answer instruction. Category: the answer type. Scored as TextVQA.
- `coco-captions` (a benign set, for over-refusal): COCO's `DIR/annotations/captions_val2017.json` and
  `DIR/val2017/`: each image with its first caption as the prompt. Scored by the refusal rate of the answers and
  the evaluators' flag rates.
- `scienceqa-img`: LLaVA's test questions `DIR/llava_test_CQM-A.json` (`id`, `image`, `conversations`), the
  official `DIR/problems.json` (the answer index and the choices) and the images under `DIR/images/test/`;
  only questions with an image (the IMG split). Prompt: the human turn without `<image>`, then the letter
  instruction. Category: `subject`.
- `mmmu-pro`: MMMU-Pro as published on the Hugging Face hub (`MMMU/MMMU_Pro`): `DIR/<setting>/test-*.parquet`
  (or those files in `DIR` itself), `--subset` the setting: `standard (10 options)` (default), `standard (4
  options)` or `vision`. Standard: `id, question, options` (a list, or its Python text `"['a', 'b']"`), `answer`
  (a letter), `subject`, `image_1` ... `image_7` (`{bytes, path}`), the question and options citing them as
  `<image N>`; prompt (MMMU-Pro's `direct` one): the question, `A. option` lines, `Answer with the option letter
  from the given choices directly.`, each `<image N>` written `[image]`. An ETA job takes one image: only
  questions citing exactly one image are kept (the others are counted in a warning). Vision: `id, image, options,
  answer, subject`, the question inside the screenshot; prompt: the `direct` vision instruction. Category:
  `subject`.
- `mossbench` (benign queries that over-sensitive models refuse): MOSSBench's repository layout, `DIR/data/` (or
  that folder itself) with `images_information/information.json` (`pid -> {pid, question, image, metadata: {over:
  "type 1|2|3", harm, human, child, syn, ocr}}`) and the images it names (`images/<pid>.png`, relative to the
  folder); `--subset contrast` reads `DIR/data_contrast/`, its harmful counterparts. Prompt: the question as
  given. Category: the stimulus type (Exaggerated Risk, Negated Harm, Counterintuitive Interpretation). Scored by
  the refusal rate and the evaluators' flag rates, as `coco-captions`.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from eta.benchmarks import BenchmarkError, BenchmarkItem
from eta.benchmarks.metrics import MME_COGNITION, MME_PERCEPTION, MMMU_PRO_LETTERS, OPTION_LETTERS
from eta.benchmarks.readers import NO_CATEGORY, _first_existing, _no_subset, _read_text, json_error

logger = logging.getLogger(__name__)

# The instructions LLaVA's kit appends (`--single-pred-prompt`; the short-answer one is in its question files).
LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."

MMBENCH_TSV = "mmbench_dev_20230712.tsv"
TEXTVQA_QUESTIONS = "llava_textvqa_val_v051_ocr.jsonl"
TEXTVQA_ANNOTATIONS = "TextVQA_0.5.1_val.json"
MME_RELEASE = "MME_Benchmark_release_version"
SCIENCEQA_QUESTIONS = "llava_test_CQM-A.json"
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


# ------------------------------------------------------------------------------------------------ helpers
def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise json_error(path, exc) from None


def _empty(value: Any) -> bool:
    """MMBench's missing cells: empty, NaN as pandas writes it, or `none`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


# ------------------------------------------------------------------------------------------------ MMBench
def read_mmbench(data_dir: Path, *, subset: str | None = None) -> list[BenchmarkItem]:
    """MMBench's dev TSV with its base64 images; `subset` names another TSV file of the same layout."""
    if subset is not None:
        if Path(subset).name != subset:
            raise BenchmarkError(f"--subset names the TSV file by its file name, got {subset!r}")
        path = _first_existing(data_dir, [subset], "MMBench's TSV")
    else:
        found = sorted(data_dir.glob("mmbench_dev*.tsv"))
        path = data_dir / MMBENCH_TSV if (data_dir / MMBENCH_TSV).is_file() or not found else found[0]
        if not path.is_file():
            raise BenchmarkError(f"{path}: missing (expected MMBench's dev TSV with base64 images, as LLaVA's kit "
                                 f"lays it out)")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a base64 image is one cell of a few hundred kB
    try:
        rows = list(csv.reader(io.StringIO(_read_text(path), newline=""), delimiter="\t"))
    except csv.Error as exc:
        raise BenchmarkError(f"{path}: not a valid TSV file ({exc})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise BenchmarkError(f"{path}: empty (expected a header with index, question, A, B, answer, image)")
    header = [name.strip() for name in rows[0]]
    required = ("index", "question", "A", "B", "answer", "image")
    missing = [name for name in required if name not in header]
    if missing:
        raise BenchmarkError(f"{path}: the header lacks column(s) {', '.join(missing)} "
                             f"(expected {', '.join(required)}, hint, C, D, category)")
    items = []
    for number, row in enumerate(rows[1:], start=2):
        record = dict(zip(header, row, strict=False))
        where = f"{path}, row {number}"
        try:
            index = int(record.get("index", "").strip())
        except ValueError:
            raise BenchmarkError(f"{where}: index {record.get('index')!r} is not an integer") from None
        options = []
        for letter in OPTION_LETTERS[:4]:
            if _empty(record.get(letter)):
                break
            options.append(str(record[letter]))
        if len(options) < 2:
            raise BenchmarkError(f"{where}: needs at least options A and B")
        answer = (record.get("answer") or "").strip()
        if answer not in OPTION_LETTERS[:len(options)]:
            raise BenchmarkError(f"{where}: answer {answer!r} is not one of the row's option letters "
                                 f"{', '.join(OPTION_LETTERS[:len(options)])}")
        try:
            image = base64.b64decode(record.get("image") or "", validate=True)
        except (binascii.Error, ValueError):
            raise BenchmarkError(f"{where}: the image cell is not base64") from None
        if not image:
            raise BenchmarkError(f"{where}: empty image cell")
        question = record["question"]
        hint = record.get("hint")
        text = question if _empty(hint) else f"{hint}\n{question}"
        text += "".join(f"\n{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options, strict=False))
        items.append(BenchmarkItem(
            item_id=str(index), prompt=f"{text}\n{LETTER_PROMPT}",
            category=(record.get("category") or "").strip() or NO_CATEGORY, image_bytes=image,
            extra={"index": index, "answer": answer, "options": options,
                   "l2_category": record.get("l2-category") or None},
        ))
    return items


# ------------------------------------------------------------------------------------------------ TextVQA
def _textvqa_question(text: str) -> str:
    """The question inside a LLaVA TextVQA prompt (the line that is neither OCR tokens nor the instruction)."""
    if text.startswith("OCR tokens: "):
        found = re.search(r"Question: (.*?) Short answer:", text, re.DOTALL)
        return found.group(1) if found else text
    lines = text.split("\n")
    if lines[0].startswith("Reference OCR token:") and len(lines) > 1:
        return lines[1]
    return lines[0]


def read_textvqa(data_dir: Path, *, subset: str | None = None) -> list[BenchmarkItem]:
    """TextVQA val through LLaVA's question file, scored against the official annotations."""
    _no_subset("textvqa", subset)
    questions_path = _first_existing(data_dir, [TEXTVQA_QUESTIONS], "LLaVA's TextVQA question file (JSON Lines)")
    annotations_path = _first_existing(data_dir, [TEXTVQA_ANNOTATIONS], "TextVQA's official val annotations")
    images = data_dir / "train_images"
    annotations = _load_json(annotations_path)
    data = annotations.get("data") if isinstance(annotations, dict) else None
    if not isinstance(data, list):
        raise BenchmarkError(f"{annotations_path}: expected an object with a `data` list of annotations")
    by_key: dict[tuple[str, str], Mapping[str, Any]] = {}
    for position, annotation in enumerate(data):
        if not (isinstance(annotation, dict) and isinstance(annotation.get("answers"), list)
                and annotation["answers"] and "image_id" in annotation and isinstance(annotation.get("question"),
                                                                                       str)):
            raise BenchmarkError(f"{annotations_path}, data[{position}]: expected image_id, question and answers")
        by_key[(str(annotation["image_id"]), annotation["question"].strip().lower())] = annotation
    items = []
    seen_per_image: dict[str, int] = {}
    for number, line in enumerate(_read_text(questions_path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{questions_path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record[k].strip()
                                                   for k in ("image", "text")) or "question_id" not in record:
            raise BenchmarkError(f"{where}: expected question_id, image and text")
        image_id = str(record["question_id"])
        question = _textvqa_question(record["text"])
        annotation = by_key.get((image_id, question.strip().lower()))
        if annotation is None:
            raise BenchmarkError(f"{where}: no annotation in {annotations_path.name} for image {image_id} and "
                                 f"question {question!r}")
        image = images / record["image"]
        if not image.is_file():
            raise BenchmarkError(f"{image}: missing (expected the image of {questions_path.name} line {number})")
        seen_per_image[image_id] = seen_per_image.get(image_id, 0) + 1
        official_id = annotation.get("question_id")
        items.append(BenchmarkItem(
            item_id=str(official_id) if official_id is not None else f"{image_id}/{seen_per_image[image_id]}",
            prompt=record["text"], category=NO_CATEGORY, image_path=image,
            extra={"image_id": image_id, "question": question, "answers": [str(a) for a in annotation["answers"]],
                   "ocr_tokens": annotation.get("ocr_tokens")},
        ))
    return items


# ---------------------------------------------------------------------------------------------------- MME
def _mme_root(data_dir: Path) -> Path:
    for candidate in (data_dir, data_dir / MME_RELEASE):
        if any((candidate / name).is_dir() for name in (*MME_PERCEPTION, *MME_COGNITION)):
            return candidate
    raise BenchmarkError(f"{data_dir}: no MME subtask folder (expected {', '.join(MME_PERCEPTION[:3])}, ... "
                         f"here or under {MME_RELEASE}/)")


def _image_beside(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{suffix}" for suffix in _IMAGE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()),
                None)


def read_mme(data_dir: Path, *, subset: str | None = None) -> list[BenchmarkItem]:
    """MME's 14 subtasks (those present): two yes/no questions per image."""
    _no_subset("mme", subset)
    root = _mme_root(data_dir)
    missing = [name for name in (*MME_PERCEPTION, *MME_COGNITION) if not (root / name).is_dir()]
    if missing:
        logger.warning("%s: MME subtask folder(s) missing, left out of the totals: %s", root, ", ".join(missing))
    items = []
    for subtask in (*MME_PERCEPTION, *MME_COGNITION):
        folder = root / subtask
        if subtask in missing:
            continue
        split = (folder / "questions_answers_YN").is_dir()
        texts = folder / "questions_answers_YN" if split else folder
        pictures = folder / "images" if split else folder
        files = sorted(texts.glob("*.txt"))
        if not files:
            raise BenchmarkError(f"{texts}: no question files (expected <image>.txt with question<TAB>Yes|No lines)")
        for path in files:
            image = _image_beside(pictures, path.stem)
            if image is None:
                raise BenchmarkError(f"{pictures / path.stem}.jpg: missing (expected the image of {path})")
            lines = [line for line in _read_text(path).splitlines() if line.strip()]
            if not lines:
                raise BenchmarkError(f"{path}: empty (expected question<TAB>Yes|No lines)")
            for number, line in enumerate(lines, start=1):
                question, tab, answer = line.rpartition("\t")
                if not tab or not question.strip() or answer.strip().lower() not in ("yes", "no"):
                    raise BenchmarkError(f"{path}, line {number}: expected question<TAB>Yes|No")
                items.append(BenchmarkItem(
                    item_id=f"{subtask}/{path.stem}/{number}",
                    prompt=f"{question.strip()}\n{SHORT_ANSWER_PROMPT}", category=subtask, image_path=image,
                    extra={"answer": answer.strip().capitalize(), "image": path.stem, "subtask": subtask},
                ))
    return items


# ----------------------------------------------------------------------------------------------- ScienceQA
def read_scienceqa_img(data_dir: Path, *, subset: str | None = None) -> list[BenchmarkItem]:
    """ScienceQA's test questions that have an image, with LLaVA's prompt and the official answers."""
    _no_subset("scienceqa-img", subset)
    questions_path = _first_existing(data_dir, [SCIENCEQA_QUESTIONS], "LLaVA's ScienceQA test questions (JSON)")
    problems_path = _first_existing(data_dir, ["problems.json"], "ScienceQA's problems.json (answers, choices)")
    questions, problems = _load_json(questions_path), _load_json(problems_path)
    if not isinstance(questions, list):
        raise BenchmarkError(f"{questions_path}: expected a JSON list of questions")
    if not isinstance(problems, dict):
        raise BenchmarkError(f"{problems_path}: expected a JSON object of problem id -> problem")
    items = []
    for position, question in enumerate(questions):
        where = f"{questions_path}, item {position}"
        if not isinstance(question, dict) or "id" not in question:
            raise BenchmarkError(f"{where}: expected an object with id and conversations")
        if not question.get("image"):
            continue  # the IMG split: questions with an image only
        turns = question.get("conversations")
        if not (isinstance(turns, list) and turns and isinstance(turns[0], dict)
                and isinstance(turns[0].get("value"), str)):
            raise BenchmarkError(f"{where}: expected conversations[0].value (the question)")
        pid = str(question["id"])
        problem = problems.get(pid)
        if not (isinstance(problem, dict) and isinstance(problem.get("choices"), list)
                and isinstance(problem.get("answer"), int) and 0 <= problem["answer"] < len(problem["choices"])
                <= len(OPTION_LETTERS)):
            raise BenchmarkError(f"{problems_path}, problem {pid}: expected choices (2-5) and an answer index "
                                 f"(asked by {questions_path.name} item {position})")
        image = data_dir / "images" / "test" / str(question["image"])
        if not image.is_file():
            raise BenchmarkError(f"{image}: missing (expected the image of ScienceQA problem {pid})")
        text = turns[0]["value"].replace("<image>", "").strip()
        items.append(BenchmarkItem(
            item_id=pid, prompt=f"{text}\n{LETTER_PROMPT}", category=str(problem.get("subject") or NO_CATEGORY),
            image_path=image,
            extra={"answer": OPTION_LETTERS[problem["answer"]], "options": [str(c) for c in problem["choices"]]},
        ))
    return items


# ------------------------------------------------------------------------------------------------- VQAv2
VQAV2_QUESTIONS = "v2_OpenEnded_mscoco_{split}_questions.json"
VQAV2_ANNOTATIONS = "v2_mscoco_{split}_annotations.json"


def read_vqav2(data_dir: Path, *, subset: str | None = None) -> list[BenchmarkItem]:
    """VQAv2 from its official question and annotation files (`subset`: the split, `val2014` by default; test-dev
    has no public answers: its score comes from the EvalAI server only). Prompt: the question and the
    short-answer instruction, as LLaVA's VQAv2 question file has it. Category: the answer type."""
    split = subset or "val2014"
    if Path(split).name != split:
        raise BenchmarkError(f"--subset names a VQAv2 split such as val2014, got {split!r}")
    questions_path = _first_existing(data_dir, [VQAV2_QUESTIONS.format(split=split)], f"VQAv2's {split} questions")
    annotations_path = _first_existing(data_dir, [VQAV2_ANNOTATIONS.format(split=split)],
                                       f"VQAv2's {split} annotations (ten answers per question)")
    questions, annotations = _load_json(questions_path), _load_json(annotations_path)
    if not (isinstance(questions, dict) and isinstance(questions.get("questions"), list)):
        raise BenchmarkError(f"{questions_path}: expected an object with a `questions` list")
    if not (isinstance(annotations, dict) and isinstance(annotations.get("annotations"), list)):
        raise BenchmarkError(f"{annotations_path}: expected an object with an `annotations` list")
    by_id: dict[Any, Mapping[str, Any]] = {}
    for position, annotation in enumerate(annotations["annotations"]):
        answers = annotation.get("answers") if isinstance(annotation, dict) else None
        if not (isinstance(answers, list) and answers and all(isinstance(a, dict) and isinstance(a.get("answer"), str)
                                                              for a in answers) and "question_id" in annotation):
            raise BenchmarkError(f"{annotations_path}, annotations[{position}]: expected question_id and answers "
                                 f"[{{answer}}, ...]")
        by_id[annotation["question_id"]] = annotation
    items = []
    for position, question in enumerate(questions["questions"]):
        if not (isinstance(question, dict) and isinstance(question.get("question"), str)
                and "question_id" in question and "image_id" in question):
            raise BenchmarkError(f"{questions_path}, questions[{position}]: expected question_id, image_id, question")
        annotation = by_id.get(question["question_id"])
        if annotation is None:
            raise BenchmarkError(f"{annotations_path}: no annotation of question {question['question_id']} "
                                 f"(asked in {questions_path.name})")
        image = data_dir / split / f"COCO_{split}_{int(question['image_id']):012d}.jpg"
        if not image.is_file():
            raise BenchmarkError(f"{image}: missing (expected the image of VQAv2 question {question['question_id']})")
        items.append(BenchmarkItem(
            item_id=str(question["question_id"]), prompt=f"{question['question']}\n{SHORT_ANSWER_PROMPT}",
            category=str(annotation.get("answer_type") or NO_CATEGORY), image_path=image,
            extra={"answers": [a["answer"] for a in annotation["answers"]], "image_id": question["image_id"]},
        ))
    return items


# ------------------------------------------------------------------------------------- COCO (benign set)
def read_coco_captions(data_dir: Path, *, subset: str | None = None) -> list[BenchmarkItem]:
    """Benign images with their captions as prompts (the paper's benign set for CLIP's calibration): COCO's
    `annotations/captions_<split>.json` and `<split>/<file_name>`; `subset` is the split (default `val2017`).
    One item per image, its first caption (lowest annotation id) as the prompt."""
    split = subset or "val2017"
    if Path(split).name != split:
        raise BenchmarkError(f"--subset names a COCO split such as val2017, got {split!r}")
    path = _first_existing(data_dir, [f"annotations/captions_{split}.json", f"captions_{split}.json"],
                           f"COCO's caption annotations of {split}")
    captions = _load_json(path)
    if not (isinstance(captions, dict) and isinstance(captions.get("images"), list)
            and isinstance(captions.get("annotations"), list)):
        raise BenchmarkError(f"{path}: expected an object with `images` and `annotations` lists")
    first: dict[Any, tuple[Any, str]] = {}
    for position, annotation in enumerate(captions["annotations"]):
        if not (isinstance(annotation, dict) and isinstance(annotation.get("caption"), str)
                and "image_id" in annotation):
            raise BenchmarkError(f"{path}, annotations[{position}]: expected image_id and caption")
        order = annotation.get("id", position)
        known = first.get(annotation["image_id"])
        if known is None or order < known[0]:
            first[annotation["image_id"]] = (order, annotation["caption"].strip())
    items = []
    for position, image in enumerate(captions["images"]):
        if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
            raise BenchmarkError(f"{path}, images[{position}]: expected id and file_name")
        caption = first.get(image["id"])
        if caption is None or not caption[1]:
            continue  # an image nobody captioned has no prompt
        picture = data_dir / split / image["file_name"]
        if not picture.is_file():
            raise BenchmarkError(f"{picture}: missing (expected the image of COCO {split} image {image['id']})")
        items.append(BenchmarkItem(item_id=str(image["id"]), prompt=caption[1], category=NO_CATEGORY,
                                   image_path=picture, extra={"file_name": image["file_name"]}))
    return items


# ----------------------------------------------------------------------------------------------- MMMU-Pro
MMMU_PRO_SETTINGS = ("standard (10 options)", "standard (4 options)", "vision")
# MMMU-Pro's `direct` prompts (its prompts.yaml).
MMMU_PRO_STANDARD_PROMPT = "Answer with the option letter from the given choices directly."
MMMU_PRO_VISION_PROMPT = ("Answer with the option letter from the given choices directly. The last line of your "
                          "response should be of the following format: 'Answer: $LETTER' (without quotes) where "
                          "LETTER is one of options.")
_IMAGE_TOKEN = re.compile(r"<image\s+(\d+)>")


def _mmmu_options(value: Any, where: str) -> list[str]:
    """The options of a row: a list, or the Python text of one (how the hub's parquet files hold them)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise BenchmarkError(f"{where}: options is not a list (expected text like \"['a', 'b']\")") from None
    if not (isinstance(value, list) and all(isinstance(option, str | int | float) for option in value)):
        raise BenchmarkError(f"{where}: options is not a list of texts")
    if not 2 <= len(value) <= len(MMMU_PRO_LETTERS):
        raise BenchmarkError(f"{where}: {len(value)} options (expected 2 to {len(MMMU_PRO_LETTERS)})")
    return [str(option) for option in value]


def _parquet_image(value: Any) -> bytes | None:
    data = value.get("bytes") if isinstance(value, dict) else value
    return data if isinstance(data, bytes) and data else None


def read_mmmu_pro(data_dir: Path, *, subset: str | None = None) -> list[BenchmarkItem]:
    """MMMU-Pro's test split in one setting (`subset`), from the hub's parquet files; single-image questions."""
    setting = {"standard": "standard (10 options)"}.get(subset or "", subset or "standard (10 options)")
    if setting not in MMMU_PRO_SETTINGS:
        raise BenchmarkError(f"--subset names an MMMU-Pro setting ({', '.join(MMMU_PRO_SETTINGS)}), got {subset!r}")
    folder = data_dir / setting if (data_dir / setting).is_dir() else data_dir
    files = sorted(folder.glob("test-*.parquet"))
    if not files:
        raise BenchmarkError(f"{data_dir / setting}/test-*.parquet: missing (expected MMMU-Pro's `{setting}` "
                             f"setting as the hub lays it out, MMMU/MMMU_Pro)")
    import pyarrow.parquet as pq

    vision = setting == "vision"
    required = ("id", "image", "options", "answer") if vision else ("id", "question", "options", "answer",
                                                                        "image_1")
    items: list[BenchmarkItem] = []
    skipped = {"no image": 0, "several images": 0}
    for path in files:
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise BenchmarkError(f"{path}: not a readable parquet file ({exc})") from None
        missing = [name for name in required if name not in table.column_names]
        if missing:
            other = "standard (10 options)" if vision else "vision"
            raise BenchmarkError(f"{path}: missing column(s) {', '.join(missing)} (the `{setting}` setting has "
                                 f"{', '.join(required)}; is this the `{other}` setting?)")
        for number, row in enumerate(table.to_pylist()):
            where = f"{path}, row {number}"
            item_id = row.get("id")
            if not isinstance(item_id, str) or not item_id.strip():
                raise BenchmarkError(f"{where}: empty id")
            options = _mmmu_options(row.get("options"), where)
            letters = MMMU_PRO_LETTERS[:len(options)]
            answer = row.get("answer")
            if not (isinstance(answer, str) and answer.strip() in letters):
                raise BenchmarkError(f"{where}: answer {answer!r} is not one of the row's option letters "
                                     f"{letters[0]}-{letters[-1]}")
            if vision:
                image = _parquet_image(row.get("image"))
                if image is None:
                    raise BenchmarkError(f"{where}: no image bytes (expected image = {{bytes, path}})")
                prompt = MMMU_PRO_VISION_PROMPT
            else:
                question = row.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise BenchmarkError(f"{where}: empty question")
                text = question + "".join(f"\n{letter}. {option}" for letter, option in zip(letters, options,
                                                                                           strict=False))
                cited = list(dict.fromkeys(int(n) for n in _IMAGE_TOKEN.findall(text)))
                if len(cited) != 1:
                    skipped["no image" if not cited else "several images"] += 1
                    continue
                image = _parquet_image(row.get(f"image_{cited[0]}"))
                if image is None:
                    raise BenchmarkError(f"{where}: the question cites <image {cited[0]}> but image_{cited[0]} "
                                         f"holds no image bytes")
                prompt = f"{_IMAGE_TOKEN.sub('[image]', text)}\n{MMMU_PRO_STANDARD_PROMPT}"
            items.append(BenchmarkItem(
                item_id=item_id.strip(), prompt=prompt, category=str(row.get("subject") or NO_CATEGORY),
                image_bytes=image, extra={"answer": answer.strip(), "options": options, "setting": setting},
            ))
    if any(skipped.values()):
        logger.warning("%s: %d MMMU-Pro question(s) left out: %d cite no image, %d cite several (an ETA job takes "
                       "one image); %d kept", folder, sum(skipped.values()), skipped["no image"],
                       skipped["several images"], len(items))
    return items


# ---------------------------------------------------------------------------------------------- MOSSBench
MOSSBENCH_INFO = "images_information/information.json"
MOSSBENCH_TYPES = {"type 1": "Exaggerated Risk", "type 2": "Negated Harm", "type 3": "Counterintuitive Interpretation"}
_MOSSBENCH_SETS = {"oversensitivity": "data", "contrast": "data_contrast"}


def read_mossbench(data_dir: Path, *, subset: str | None = None) -> list[BenchmarkItem]:
    """MOSSBench's 300 benign image queries (or, `subset="contrast"`, its harmful counterparts) from its
    repository's `information.json`; `data_dir` is the repository root or the data folder itself."""
    chosen = subset or "oversensitivity"
    if chosen not in _MOSSBENCH_SETS:
        raise BenchmarkError(f"--subset names a MOSSBench set ({', '.join(_MOSSBENCH_SETS)}), got {subset!r}")
    nested = data_dir / _MOSSBENCH_SETS[chosen]
    root = data_dir if (data_dir / MOSSBENCH_INFO).is_file() or not (nested / MOSSBENCH_INFO).is_file() else nested
    path = _first_existing(root, [MOSSBENCH_INFO], f"MOSSBench's {MOSSBENCH_INFO}, here or under "
                                                   f"{_MOSSBENCH_SETS[chosen]}/")
    entries = _load_json(path)
    if not isinstance(entries, dict):
        raise BenchmarkError(f"{path}: expected a JSON object of pid -> query")
    items = []
    for key, entry in entries.items():
        where = f"{path}, query {key}"
        metadata = entry.get("metadata") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("question"), str) and entry["question"].strip()
                and isinstance(entry.get("image"), str) and isinstance(metadata, dict)):
            raise BenchmarkError(f"{where}: expected question, image and metadata")
        kind = str(metadata.get("over", "")).strip().lower()
        if kind not in MOSSBENCH_TYPES:
            raise BenchmarkError(f"{where}: metadata.over {metadata.get('over')!r} is not one of "
                                 f"{', '.join(MOSSBENCH_TYPES)}")
        image = root / entry["image"]
        if not image.is_file():
            raise BenchmarkError(f"{image}: missing (expected the image of MOSSBench query {key})")
        items.append(BenchmarkItem(
            item_id=str(entry.get("pid") or key), prompt=entry["question"], category=MOSSBENCH_TYPES[kind],
            image_path=image,
            extra={"over": kind, "set": chosen, **{name: metadata.get(name) for name in
                                                   ("harm", "human", "child", "syn", "ocr") if name in metadata}},
        ))
    return items


ABILITY_READERS: dict[str, Callable[..., list[BenchmarkItem]]] = {
    "mmbench": read_mmbench,
    "textvqa": read_textvqa,
    "mme": read_mme,
    "scienceqa-img": read_scienceqa_img,
    "vqav2": read_vqav2,
    "coco-captions": read_coco_captions,
    "mmmu-pro": read_mmmu_pro,
    "mossbench": read_mossbench,
}
