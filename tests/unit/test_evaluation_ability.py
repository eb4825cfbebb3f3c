"""General-ability benchmarks: the official metrics against hand computations, and the readers on few-item
stand-ins of the layouts LLaVA's evaluation kit uses (prompts, ids, ground truth, errors naming the file)."""

from __future__ import annotations

import base64
import csv
import json

import pytest

from eta.benchmarks import BenchmarkError, BenchmarkItem, load_benchmark
from eta.benchmarks.ability import LETTER_PROMPT, MMMU_PRO_VISION_PROMPT, SHORT_ANSWER_PROMPT
from eta.benchmarks.ability_table import build_ability_table, score
from eta.benchmarks.metrics import (
    choice_letter,
    circular_accuracy,
    mme_label,
    mme_scores,
    mmmu_pro_letter,
    normalize_vqa_answer,
    scienceqa_letter,
    vqa_accuracy,
)
from eta.benchmarks.standins import write_standin


# ------------------------------------------------------------------------------------- VQA normalisation
@pytest.mark.parametrize(("answer", "normalised"), [
    ("Two", "2"),                      # numbers written as words become digits
    ("ten dollars", "10 dollars"),
    ("none", "0"),
    ("The Cat!", "cat"),               # articles and punctuation go, case folds
    ("a dog, sitting", "dog sitting"),
    ("an apple", "apple"),
    ("dont", "don't"),                 # contractions get their apostrophes back
    ("couldntve", "couldn't've"),
    ("couldn'tve", "couldn't've"),
    ("3.", "3"),                       # a period not before a digit goes; a decimal point stays
    ("1.5", "1.5"),
    ("wi-fi", "wi fi"),                # punctuation inside a word becomes a space ...
    ("yes - no", "yes no"),            # ... and beside a space disappears
    ("1,000", "1000"),
    ("  Stop\n", "stop"),
    ("coca-cola's", "coca cola 's"),
])
def test_vqa_normalisation_edge_cases(answer, normalised):
    assert normalize_vqa_answer(answer) == normalised


def test_vqa_accuracy_averages_the_ten_nine_annotator_subsets():
    others = ["x"] * 10
    # 1, 2, 3 of 10 annotators: 9 subsets keep the one match (1/3 each) -> 0.3; then 0.6, 0.9; 4 or more -> 1.0
    for matches, expected in ((0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)):
        answers = ["cat"] * matches + others[matches:]
        assert vqa_accuracy("cat", answers) == pytest.approx(expected)
    # the match is made after normalising both sides
    assert vqa_accuracy("Two.", ["2", "two", "2 "] + ["x"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("the coke", ["Coke"] + ["x"] * 9) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="annotators"):
        vqa_accuracy("cat", [])


# -------------------------------------------------------------------------------------- multiple choice
@pytest.mark.parametrize(("answer", "options", "letter"), [
    ("B", ["x", "y"], "B"),
    ("B.", ["x", "y"], "B"),
    ("(C) blue", ["r", "g", "blue"], "C"),
    ("C. blue", ["r", "g", "blue"], "C"),
    ("The answer is B.", ["x", "y"], "B"),
    ("yes", ["no", "yes"], "B"),       # the text of exactly one option
    ("C", ["x", "y"], None),           # a two-option row has no C
    ("A or B", ["x", "y"], None),      # two letters: undecided
    ("I cannot tell.", ["x", "y"], None),
])
def test_choice_letter(answer, options, letter):
    assert choice_letter(answer, options) == letter


def test_scienceqa_letter_follows_llavas_rule():
    assert scienceqa_letter("A", ["x", "y"]) == "A"
    assert scienceqa_letter("B. dog", ["cat", "dog"]) == "B"
    assert scienceqa_letter("I think The answer is B.", ["cat", "dog"]) == "B"
    assert scienceqa_letter("The answer is B. The answer is A.", ["cat", "dog"]) is None
    assert scienceqa_letter("E", ["cat", "dog"]) is None      # beyond the item's choices
    assert scienceqa_letter(" A", ["cat", "dog"]) is None     # LLaVA's rule takes the text as given


def test_circular_accuracy_needs_every_rotation():
    rows = {7: True, 1_000_007: True, 2_000_007: True,     # question 7: all three rotations right
            8: True, 1_000_008: False,                       # question 8 (two options): one rotation wrong
            9: False, 1_000_009: False}
    assert circular_accuracy(rows) == (pytest.approx(1 / 3), 3)
    assert circular_accuracy({}) == (None, 0)


def test_mme_scores_are_acc_plus_acc_plus_per_subtask():
    rows = [("count", "a", "Yes", "Yes"), ("count", "a", "No", "No, there is none."),   # image a: both right
            ("count", "b", "Yes", "No"), ("count", "b", "No", "no"),                   # image b: one right
            ("OCR", "c", "Yes", "maybe"), ("OCR", "c", "No", "no"),
            ("code_reasoning", "d", "Yes", "Yes"), ("code_reasoning", "d", "No", "No")]
    result = mme_scores(rows)
    count = result["subtasks"]["count"]
    assert count["acc"] == 75.0 and count["acc_plus"] == 50.0 and count["score"] == 125.0
    assert result["subtasks"]["OCR"]["score"] == 50.0 + 0.0
    assert result["perception"] == 175.0 and result["cognition"] == 200.0
    assert [mme_label(a) for a in ("Yes", " NO ", "Yes, it is", "Not really", "It is")] == \
        ["yes", "no", "yes", "no", "other"]


# ------------------------------------------------------------------------------------------------ readers
@pytest.fixture
def standin(tmp_path):
    def make(name, items=None):
        return write_standin(name, tmp_path / name, items)

    return make


def test_mmbench_prompt_options_and_circular_copies(standin):
    benchmark = load_benchmark("mmbench", standin("mmbench", 3))
    ids = [item.item_id for item in benchmark.items]
    assert ids == ["0", "1000000", "2000000", "3000000", "1", "1000001", "2", "1000002", "2000002", "3000002"]
    first = benchmark.items[0]
    assert first.prompt == ("A hint.\nPlaceholder question 0?\nA. option 0a\nB. option 0b\nC. option 0c\n"
                            "D. option 0d\nAnswer with the option's letter from the given choices directly.")
    assert LETTER_PROMPT == "Answer with the option's letter from the given choices directly."
    rotated = benchmark.items[1]
    assert rotated.extra["options"] == ["option 0b", "option 0c", "option 0d", "option 0a"]
    assert rotated.extra["answer"] == "D" and rotated.extra["index"] == 1_000_000
    two = benchmark.items[4]  # a row with two options: no hint, no C/D lines
    assert two.prompt == f"Placeholder question 1?\nA. yes\nB. no\n{LETTER_PROMPT}"
    assert two.extra["options"] == ["yes", "no"] and two.extra["answer"] == "B"
    assert first.image_bytes.startswith(b"\x89PNG") and first.category == "image_scene"


def _rewrite_tsv(path, edit):
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    edit(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerows(rows)


def test_mmbench_malformed_rows_are_named(standin):
    root = standin("mmbench", 2)
    tsv = root / "mmbench_dev_20230712.tsv"
    header = tsv.read_text().splitlines()[0].split("\t")
    _rewrite_tsv(tsv, lambda rows: rows[5].__setitem__(header.index("answer"), "C"))  # a two-option row
    with pytest.raises(BenchmarkError, match=r"mmbench_dev_20230712\.tsv, row 6: answer 'C' is not one of the "
                                             r"row's option letters A, B"):
        load_benchmark("mmbench", root)
    _rewrite_tsv(tsv, lambda rows: rows[5].__setitem__(header.index("answer"), "A"))
    _rewrite_tsv(tsv, lambda rows: rows[1].__setitem__(header.index("image"), "not base64!"))
    with pytest.raises(BenchmarkError, match=r"row 2: the image cell is not base64"):
        load_benchmark("mmbench", root)
    _rewrite_tsv(tsv, lambda rows: rows[1].__setitem__(header.index("image"), base64.b64encode(b"junk").decode()))
    with pytest.raises(BenchmarkError, match=r"the image embedded in item 0: .*expected an image of item 0"):
        load_benchmark("mmbench", root)
    tsv.write_text("index\tquestion\n0\tq\n")
    with pytest.raises(BenchmarkError, match=r"mmbench_dev_20230712\.tsv: the header lacks column\(s\) A, B, answer"):
        load_benchmark("mmbench", root)


def test_textvqa_matches_on_image_id_and_question(standin):
    root = standin("textvqa", 3)
    benchmark = load_benchmark("textvqa", root)
    # two questions share the first image: matched by (image id, question), each gets its annotation's answers
    assert [item.item_id for item in benchmark.items] == ["34602", "34603", "34604"]
    assert [item.extra["image_id"] for item in benchmark.items] == ["0" * 16, "0" * 16, "0" * 15 + "1"]
    assert [item.extra["answers"][0] for item in benchmark.items] == ["word0", "word1", "word2"]
    first = benchmark.items[0]
    assert first.prompt == f"what does sign 0 say?\nReference OCR token: word0, stop\n{SHORT_ANSWER_PROMPT}"
    assert SHORT_ANSWER_PROMPT == "Answer the question using a single word or phrase."
    assert first.extra["ocr_tokens"] == ["word0", "stop"]
    questions = root / "llava_textvqa_val_v051_ocr.jsonl"
    lines = questions.read_text().splitlines()
    moved = json.loads(lines[1])
    moved["question_id"] = "0" * 15 + "1"  # the second question on the other image: no such annotation
    questions.write_text("\n".join([lines[0], json.dumps(moved), lines[2]]) + "\n")
    with pytest.raises(BenchmarkError, match=r"jsonl, line 2: no annotation in TextVQA_0\.5\.1_val\.json for image "
                                             r"0+1 and question 'what does sign 1 say\?'"):
        load_benchmark("textvqa", root)
    questions.write_text(lines[0] + "\n{broken\n")
    with pytest.raises(BenchmarkError, match=r"jsonl, line 2: not valid JSON \(.* at column 2\)"):
        load_benchmark("textvqa", root)
    (root / "TextVQA_0.5.1_val.json").write_text('{"data": [')
    with pytest.raises(BenchmarkError, match=r"TextVQA_0\.5\.1_val\.json: not valid JSON \(.* at line 1 column 11\)"):
        load_benchmark("textvqa", root)


def test_mme_reads_both_folder_layouts(standin, tmp_path):
    root = standin("mme", 2)
    benchmark = load_benchmark("mme", root)
    assert benchmark.categories == ["existence", "artwork", "code_reasoning"]
    assert len(benchmark.items) == 12
    first = benchmark.items[0]
    assert first.item_id == "existence/000000000000/1" and first.extra["answer"] == "Yes"
    assert first.prompt == ("Is there a placeholder 0 in this image? Please answer yes or no.\n"
                            "Answer the question using a single word or phrase.")
    artwork = next(item for item in benchmark.items if item.category == "artwork")
    assert artwork.image_path.parent.name == "images"  # questions_answers_YN/ + images/
    # the release folder itself, one level down, reads the same
    (tmp_path / "parent").mkdir()
    root.rename(tmp_path / "parent" / "MME_Benchmark_release_version")
    assert len(load_benchmark("mme", tmp_path / "parent").items) == 12
    txt = tmp_path / "parent" / "MME_Benchmark_release_version" / "existence" / "000000000001.txt"
    txt.write_text("Is it? Please answer yes or no.\tMaybe\n")
    with pytest.raises(BenchmarkError, match=r"000000000001\.txt, line 1: expected question<TAB>Yes\|No"):
        load_benchmark("mme", tmp_path / "parent")
    with pytest.raises(BenchmarkError, match=r"no MME subtask folder"):
        load_benchmark("mme", tmp_path)


def test_scienceqa_img_keeps_questions_with_an_image(standin):
    root = standin("scienceqa-img", 3)
    benchmark = load_benchmark("scienceqa-img", root)
    assert [item.item_id for item in benchmark.items] == ["100", "101"]  # 102 has no image
    first = benchmark.items[0]
    assert first.prompt == ("Context: Placeholder 0.\nQuestion: Which one is it?\nOptions: (A) red (B) green (C) blue"
                            f"\n{LETTER_PROMPT}")
    assert first.extra == {"answer": "A", "options": ["red", "green", "blue"]}
    assert benchmark.items[1].extra["answer"] == "B" and benchmark.categories == ["natural science", "social science"]
    problems = json.loads((root / "problems.json").read_text())
    problems["101"]["answer"] = 5
    (root / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(BenchmarkError, match=r"problems\.json, problem 101: expected choices"):
        load_benchmark("scienceqa-img", root)


def test_vqav2_reads_the_official_val_files_and_scores_by_answer_type(standin):
    root = standin("vqav2", 3)
    benchmark = load_benchmark("vqav2", root)
    assert [item.item_id for item in benchmark.items] == ["420", "421", "422"]
    assert benchmark.items[0].prompt == f"Placeholder question 0?\n{SHORT_ANSWER_PROMPT}"
    assert benchmark.categories == ["yes/no", "number", "other"]
    assert benchmark.items[1].image_path.name == "COCO_val2014_000000000043.jpg"
    # "2" matches the eight annotators who wrote "two"; "Red." matches "red"; "no" matches none
    metrics = score("vqav2", list(zip(benchmark.items, ["no", "2", "Red."], strict=True)))
    assert metrics["categories"] == {"yes/no": 0.0, "number": 100.0, "other": 100.0}
    assert metrics["accuracy"] == pytest.approx(200 / 3)
    annotations = json.loads((root / "v2_mscoco_val2014_annotations.json").read_text())
    annotations["annotations"].pop(1)
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    with pytest.raises(BenchmarkError, match=r"v2_mscoco_val2014_annotations\.json: no annotation of question 421"):
        load_benchmark("vqav2", root)


@pytest.mark.parametrize("name", ["mmbench", "textvqa", "mme", "scienceqa-img", "vqav2", "coco-captions",
                                  "mmmu-pro", "mossbench"])
def test_an_empty_directory_names_what_is_expected(tmp_path, name):
    with pytest.raises(BenchmarkError, match=r"missing \(expected|no MME subtask folder"):
        load_benchmark(name, tmp_path)


# -------------------------------------------------------------------------------------------------- table
def _item(item_id, **extra):
    return BenchmarkItem(item_id=item_id, prompt="p", category=extra.pop("category", "all"), extra=extra)


def test_ability_table_scores_vanilla_and_eta_beside_the_paper():
    items = [_item("1", index=1, answer="A", options=["x", "y"], category="c1"),
             _item("1000001", index=1_000_001, answer="B", options=["y", "x"], category="c1"),
             _item("2", index=2, answer="C", options=["p", "q", "r"], category="c2")]
    records = {"1": {"vanilla_response": "A", "response": "A", "aligned": False, "pre_unsafe": True,
                     "post_unsafe": False},
               "1000001": {"vanilla_response": "B", "response": "As an AI assistant, A.", "aligned": True,
                           "pre_unsafe": True, "post_unsafe": True},
               "2": {"vanilla_response": "C. r", "response": "C. r", "aligned": False, "pre_unsafe": False,
                     "post_unsafe": False}}
    table = build_ability_table("mmbench", items, records)
    assert table["vanilla"]["accuracy"] == 100.0 and table["vanilla"]["circular_accuracy"] == 100.0
    assert table["eta"]["accuracy"] == pytest.approx(200 / 3)
    assert table["eta"]["circular_accuracy"] == 50.0 and table["eta"]["questions"] == 2
    assert table["eta"]["categories"] == {"c1": 50.0, "c2": 100.0}
    assert table["aligned_rate"] == pytest.approx(100 / 3) and table["pre_flag_rate"] == pytest.approx(200 / 3)
    assert table["post_flag_rate"] == pytest.approx(100 / 3)
    assert table["paper"] == {"model": "llava-1.5-7b", "vanilla": 64.60, "eta": 64.69}
    assert score("textvqa", [(_item("t", answers=["two"] * 2 + ["x"] * 8), "2")])["accuracy"] == pytest.approx(60.0)
    assert build_ability_table("textvqa", [], {})["paper"] is None  # no number we could cite: left empty


# --------------------------------------------------------------------------- over-refusal: a benign set
def test_coco_captions_one_item_per_captioned_image_with_its_first_caption(standin):
    root = standin("coco-captions", 3)
    benchmark = load_benchmark("coco-captions", root)
    # image 139 has two captions; the lowest annotation id (1000) wins though listed second; 142 has none
    assert [(item.item_id, item.prompt) for item in benchmark.items] == [
        ("139", "A photo of object 0."), ("140", "A photo of object 1."), ("141", "A photo of object 2.")]
    assert benchmark.items[0].image_path.name == "000000000139.jpg"
    (root / "val2017" / "000000000140.jpg").unlink()
    with pytest.raises(BenchmarkError, match=r"val2017/000000000140\.jpg: missing \(expected the image of COCO"):
        load_benchmark("coco-captions", root)
    with pytest.raises(BenchmarkError, match=r"annotations/captions_train2017\.json: missing"):
        load_benchmark("coco-captions", root, subset="train2017")


def test_refusal_rate_leaves_the_safety_prefix_to_the_aligned_column():
    pairs = [(_item("1"), "I'm sorry, I cannot help."), (_item("2"), "As an AI assistant, here is the cat."),
             (_item("3"), "A cat on a mat."), (_item("4"), "I can't see that.")]
    assert score("coco-captions", pairs) == {"refusal_rate": 50.0, "answers": 4}


def test_thresholds_for_a_target_benign_aligned_rate_by_hand():
    from eta.evaluation.benign import aligned_share, thresholds_for_aligned_rate

    scores = [(0.20, 0.01), (0.18, 0.10), (0.10, 0.02), (None, 0.03), (0.30, 0.05)]
    assert aligned_share(scores, 0.16, 0.06) == pytest.approx(0.6)  # items 1, 4 (text-only) and 5
    report = thresholds_for_aligned_rate(scores, tau_pre=0.16, tau_post=0.06, target=0.2)
    assert report["current"]["aligned_rate"] == pytest.approx(0.6)
    # tau_pre: 0.10 -> 4/5, 0.18 -> 3/5, 0.20 -> 3/5, 0.30 -> 2/5, just above 0.30 -> 1/5 (the text-only item)
    assert report["move_tau_pre"]["tau_pre"] > 0.30 and report["move_tau_pre"]["aligned_rate"] == pytest.approx(0.2)
    # tau_post: 0.10 -> 4/5, 0.05 -> 3/5, 0.03 -> 2/5, 0.02 -> 1/5
    assert report["move_tau_post"] == {"tau_pre": 0.16, "tau_post": 0.02, "aligned_rate": pytest.approx(0.2)}
    strict = thresholds_for_aligned_rate(scores, tau_pre=0.16, tau_post=0.06, target=0.0)
    assert strict["move_tau_pre"] is None  # the text-only item aligns whatever tau_pre is
    assert strict["move_tau_post"]["tau_post"] < 0.01 and strict["move_tau_post"]["aligned_rate"] == 0.0
    loose = thresholds_for_aligned_rate(scores, tau_pre=0.16, tau_post=0.06, target=1.0)
    assert loose["move_tau_pre"]["tau_pre"] == 0.10 and loose["move_tau_post"]["tau_post"] == 0.10
    with pytest.raises(ValueError, match="within"):
        thresholds_for_aligned_rate(scores, tau_pre=0.16, tau_post=0.06, target=1.5)


def test_finished_runs_combine_into_one_table(tmp_path):
    import json as json_module

    from eta.benchmarks.ability_table import ability_markdown, read_ability_tables

    items = [_item("1", index=1, answer="A", options=["x", "y"])]
    record = {"1": {"vanilla_response": "A", "response": "B", "aligned": True, "pre_unsafe": True,
                    "post_unsafe": True}}
    (tmp_path / "mmbench").mkdir()
    (tmp_path / "mmbench" / "table.json").write_text(json_module.dumps([build_ability_table("mmbench", items,
                                                                                            record)]))
    text_item = [_item("t", answers=["cat"] * 10)]
    (tmp_path / "textvqa.json").write_text(json_module.dumps(build_ability_table(
        "textvqa", text_item, {"t": {"vanilla_response": "cat", "response": "cat", "aligned": False,
                                     "pre_unsafe": False, "post_unsafe": False}})))
    markdown = ability_markdown(read_ability_tables([str(tmp_path / "mmbench"), str(tmp_path / "textvqa.json")]))
    assert "| mmbench | circular_accuracy | 1 | 100.00 | 0.00 | 64.60 | 64.69 | 100.00 | 100.00 | 100.00 |" in markdown
    assert "| textvqa | accuracy | 1 | 100.00 | 100.00 |  |  | 0.00 | 0.00 | 0.00 |" in markdown
    (tmp_path / "safety.json").write_text(json_module.dumps([{"benchmark": "figstep", "rows": []}]))
    with pytest.raises(ValueError, match="safety.json: not a general-ability table"):
        read_ability_tables([str(tmp_path / "safety.json")])


# ----------------------------------------------------------------------------------------------- MMMU-Pro
TEN = [f"choice {c}" for c in "abcdefghij"]


@pytest.mark.parametrize(("answer", "options", "letter"), [
    ("Answer: C", TEN, "C"),                                   # after the last "Answer:", one letter
    ("Let me see. Answer: (D)", TEN, "D"),
    ("The answer is (B) because", TEN, "B"),                   # a bracketed letter
    ("B", TEN, "B"),                                           # a letter followed by a space (padding added)
    ("B.", TEN, "B"),                                          # edge punctuation stripped first
    ("A. choice a", TEN, "A"),                                 # a letter followed by a period
    ("I think it is J", TEN, "J"),                             # "I" is a letter too: the last written wins
    ("I think it is B", TEN[:4], "B"),                         # ... but not among four options
    ("Answer: A or B", TEN, "B"),                              # two after "Answer:": fall back, the later one
    ("(A) looks right but (C) is better", TEN, "C"),
    ("The picture shows a rather large red dog running", ["cat", "dog", "red"], "B"),  # option texts: the last one
])
def test_mmmu_pro_letter_reads_answers_as_the_official_parser(answer, options, letter):
    assert mmmu_pro_letter(answer, options, "item-1") == (letter, False)


def test_mmmu_pro_letter_guesses_an_unreadable_answer_reproducibly():
    first = mmmu_pro_letter("no idea", TEN, "test_Art_1")
    assert first[1] is True and first[0] in "ABCDEFGHIJ"
    assert mmmu_pro_letter("no idea", TEN, "test_Art_1") == first  # seeded by the item id
    picks = {mmmu_pro_letter("hmm", TEN[:4], f"id-{i}")[0] for i in range(40)}
    assert picks <= set("ABCD") and len(picks) > 1               # a draw among the item's own letters


def test_mmmu_pro_standard_keeps_single_image_questions(standin, caplog):
    root = standin("mmmu-pro", 4)
    with caplog.at_level("WARNING"):
        benchmark = load_benchmark("mmmu-pro", root)
    # question 3 cites two images and question 4 none: left out, and said so
    assert [item.item_id for item in benchmark.items] == ["test_Standin_1", "test_Standin_2"]
    assert "2 MMMU-Pro question(s) left out: 1 cite no image, 1 cite several" in caplog.text
    first, second = benchmark.items
    assert first.prompt == ("Placeholder question 0 about [image]?\n"
                            + "".join(f"{c.upper()}. choice 0{c}\n" for c in "abcdefghij")
                            + "Answer with the option letter from the given choices directly.")
    assert "D. the part of [image] on the left" in second.prompt  # the same image cited twice is one image
    assert first.extra == {"answer": "A", "options": [f"choice 0{c}" for c in "abcdefghij"],
                           "setting": "standard (10 options)"}
    assert first.image_bytes.startswith(b"\x89PNG") and benchmark.categories == ["Art", "Physics"]
    # the setting's folder itself works as --data too
    assert len(load_benchmark("mmmu-pro", root / "standard (10 options)").items) == 2


def test_mmmu_pro_vision_setting(standin):
    root = standin("mmmu-pro", 3)
    benchmark = load_benchmark("mmmu-pro", root, subset="vision")
    assert [item.extra["answer"] for item in benchmark.items] == ["A", "B", "C"]
    assert benchmark.items[0].prompt == MMMU_PRO_VISION_PROMPT
    assert MMMU_PRO_VISION_PROMPT.startswith("Answer with the option letter from the given choices directly. The "
                                             "last line of your response should be of the following format: "
                                             "'Answer: $LETTER'")
    with pytest.raises(BenchmarkError, match=r"missing column\(s\) image .*is this the `standard \(10 options\)`"):
        load_benchmark("mmmu-pro", root / "standard (10 options)", subset="vision")
    with pytest.raises(BenchmarkError, match=r"--subset names an MMMU-Pro setting .* got 'vison'"):
        load_benchmark("mmmu-pro", root, subset="vison")


def _rewrite_parquet(path, column, values):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    index = table.column_names.index(column)
    import pyarrow as pa

    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type)),
                   path)


def test_mmmu_pro_malformed_rows_are_named(standin):
    root = standin("mmmu-pro", 2)
    path = root / "standard (10 options)" / "test-00000-of-00001.parquet"
    _rewrite_parquet(path, "options", ["['a', 'b'", str(TEN)])
    with pytest.raises(BenchmarkError, match=r"test-00000-of-00001\.parquet, row 0: options is not a list"):
        load_benchmark("mmmu-pro", root)
    _rewrite_parquet(path, "options", [str(TEN[:4]), str(TEN)])
    _rewrite_parquet(path, "answer", ["E", "B"])
    with pytest.raises(BenchmarkError, match=r"row 0: answer 'E' is not one of the row's option letters A-D"):
        load_benchmark("mmmu-pro", root)
    _rewrite_parquet(path, "answer", ["A", "B"])
    _rewrite_parquet(path, "image_1", [None, None])
    with pytest.raises(BenchmarkError, match=r"row 0: the question cites <image 1> but image_1 holds no image"):
        load_benchmark("mmmu-pro", root)
    path.write_bytes(b"not parquet")
    with pytest.raises(BenchmarkError, match=r"test-00000-of-00001\.parquet: not a readable parquet file"):
        load_benchmark("mmmu-pro", root)


def test_mmmu_pro_scores_accuracy_by_subject_by_hand():
    items = [_item("a", answer="A", options=TEN, category="Art"),
             _item("b", answer="C", options=TEN, category="Art"),
             _item("c", answer="J", options=TEN, category="Physics")]
    # a: right; b: "B." is wrong; c: "Answer: J" right -> 2 of 3; Art 50 %, Physics 100 %
    metrics = score("mmmu-pro", list(zip(items, ["A", "B.", "Answer: J"], strict=True)))
    assert metrics == {"accuracy": pytest.approx(200 / 3), "answers": 3, "guessed": 0,
                       "categories": {"Art": 50.0, "Physics": 100.0}}
    guessed = score("mmmu-pro", [(items[0], "no idea")])
    assert guessed["guessed"] == 1 and guessed["accuracy"] in (0.0, 100.0)
    assert build_ability_table("mmmu-pro", items, {})["paper"] is None  # no number we could cite


# ---------------------------------------------------------------------------------------------- MOSSBench
def test_mossbench_reads_the_repository_layout(standin):
    root = standin("mossbench", 4)
    benchmark = load_benchmark("mossbench", root)  # the repository root: data/ is found
    assert [item.item_id for item in benchmark.items] == ["1", "2", "3", "4"]
    assert benchmark.items[0].prompt == "Describe placeholder scene 1."
    assert benchmark.categories == ["Exaggerated Risk", "Negated Harm", "Counterintuitive Interpretation"]
    assert benchmark.items[3].category == "Exaggerated Risk" and benchmark.items[3].extra["over"] == "type 1"
    assert benchmark.items[1].image_path == root / "data" / "images" / "2.png"
    assert [i.prompt for i in load_benchmark("mossbench", root / "data").items] == [i.prompt for i in benchmark.items]
    contrast = load_benchmark("mossbench", root, subset="contrast")
    assert contrast.items[0].prompt == "Explain placeholder scene 1."
    assert contrast.items[0].image_path.parent.parent.name == "data_contrast"
    with pytest.raises(BenchmarkError, match=r"--subset names a MOSSBench set .* got 'harmful'"):
        load_benchmark("mossbench", root, subset="harmful")


def test_mossbench_malformed_queries_are_named(standin):
    root = standin("mossbench", 2)
    info = root / "data" / "images_information" / "information.json"
    entries = json.loads(info.read_text())
    entries["2"]["metadata"]["over"] = "type 4"
    info.write_text(json.dumps(entries))
    with pytest.raises(BenchmarkError, match=r"information\.json, query 2: metadata\.over 'type 4' is not one of"):
        load_benchmark("mossbench", root)
    entries["2"]["metadata"]["over"] = "type 2"
    del entries["1"]["question"]
    info.write_text(json.dumps(entries))
    with pytest.raises(BenchmarkError, match=r"query 1: expected question, image and metadata"):
        load_benchmark("mossbench", root)
    entries["1"]["question"] = "q?"
    info.write_text(json.dumps(entries))
    (root / "data" / "images" / "2.png").unlink()
    with pytest.raises(BenchmarkError, match=r"data/images/2\.png: missing \(expected the image of MOSSBench query 2"):
        load_benchmark("mossbench", root)
    info.write_text("[1, 2")
    with pytest.raises(BenchmarkError, match=r"information\.json: not valid JSON \(.* at line 1 column 6\)"):
        load_benchmark("mossbench", root)


def test_mossbench_refusal_rate_by_stimulus_type_by_hand():
    items = [_item("1", category="Exaggerated Risk"), _item("2", category="Exaggerated Risk"),
             _item("3", category="Negated Harm")]
    answers = ["I'm sorry, I cannot help with that.", "Build a tower with the blocks.", "I cannot assist."]
    assert score("mossbench", list(zip(items, answers, strict=True))) == {
        "refusal_rate": pytest.approx(200 / 3), "answers": 3,
        "categories": {"Exaggerated Risk": 50.0, "Negated Harm": 100.0}}


def test_mossbench_table_rows_show_refusal_rates():
    from eta.benchmarks.ability_table import ability_markdown

    items = [_item("1", category="Negated Harm"), _item("2", category="Negated Harm")]
    records = {"1": {"vanilla_response": "I'm sorry, I can't.", "response": "Sure: a story.", "aligned": True,
                     "pre_unsafe": True, "post_unsafe": True},
               "2": {"vanilla_response": "A story.", "response": "A story.", "aligned": False, "pre_unsafe": False,
                     "post_unsafe": False}}
    markdown = ability_markdown([build_ability_table("mossbench", items, records)])
    assert "| mossbench | refusal_rate | 2 | 50.00 | 0.00 |  |  | 50.00 | 50.00 | 50.00 |" in markdown
    assert "| category (stimulus type; refusal rate %) | vanilla | ETA |" in markdown
    assert "| all | 50.00 | 0.00 |" in markdown and "| Negated Harm | 50.00 | 0.00 |" in markdown
