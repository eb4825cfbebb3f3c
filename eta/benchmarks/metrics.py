"""The official metrics of the general-ability benchmarks, as plain functions of answers and ground truth.

- VQA accuracy (TextVQA through LLaVA's kit, the VQA challenge's rule): both the answer and the ten annotators'
  answers are normalised (lower case, punctuation, numbers written as words -> digits, articles dropped,
  contractions restored); for each of the ten subsets of nine annotators the answer scores
  min(matches / 3, 1), and the item scores the mean over the ten subsets. An answer given by 1, 2, 3 of 10
  annotators scores 0.3, 0.6, 0.9; 4 or more score 1.0.
- Multiple choice (MMBench, ScienceQA): the option letter read from the answer; MMBench's CircularEval counts a
  question right only when every rotated copy of it is right.
- MME: per subtask `acc` (questions right, %) + `acc+` (images with both questions right, %); perception and
  cognition are the sums over their subtasks.
- MMMU-Pro: accuracy, the letter read from the answer the way MMMU-Pro's `evaluate.py` reads it (an answer it
  cannot read gets a letter drawn at random, as there; here the draw is seeded by the item id, so a rescoring
  agrees with itself, and the guesses are counted).
"""

from __future__ import annotations

import itertools
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

# ------------------------------------------------------------------------------------ VQA normalisation
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# Punctuation the VQA rule removes (or turns into a space); the period is handled apart (decimals keep it).
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")  # what the official rule's pattern does: "3." -> "3", "1.5" kept
# The contractions the VQA rule restores, spelled correctly; every spelling that drops some of their apostrophes
# ("dont", "couldnt've", "couldntve") maps back to them.
_CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's", "i'd", "i'd've",
    "i'm", "i've", "isn't", "it'd", "it'd've", "it'll", "let's", "ma'am", "mightn't", "mightn't've", "might've",
    "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "'ow's'at", "shan't", "she'd", "she'd've",
    "she'll", "she's", "should've", "shouldn't", "shouldn't've", "somebody'd", "somebody'd've", "somebody'll",
    "somebody's", "someone'd", "someone'd've", "someone'll", "someone's", "something'd", "something'd've",
    "something'll", "that's", "there'd", "there'd've", "there're", "there's", "they'd", "they'd've", "they'll",
    "they're", "they've", "'twas", "wasn't", "we'd", "we'd've", "we'll", "we're", "we've", "weren't", "what'll",
    "what're", "what's", "what've", "when's", "where'd", "where's", "where've", "who'd", "who'd've", "who'll",
    "who're", "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've",
    "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)


def _apostrophe_variants(word: str) -> Iterable[str]:
    """`word` with every non-empty subset of its apostrophes removed."""
    positions = [i for i, c in enumerate(word) if c == "'"]
    for size in range(1, len(positions) + 1):
        for dropped in itertools.combinations(positions, size):
            yield "".join(c for i, c in enumerate(word) if i not in dropped)


_CONTRACTION_FIXES = {variant: word for word in _CONTRACTIONS for variant in _apostrophe_variants(word)
                      if variant not in _CONTRACTIONS}


def _strip_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        # Decided on the text as given: a mark beside a space (or any mark in a text with a thousands comma) goes,
        # one inside a word becomes a space ("wi-fi" -> "wi fi").
        if f"{mark} " in text or f" {mark}" in text or _DIGIT_COMMA_DIGIT.search(text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def normalize_vqa_answer(answer: str) -> str:
    """An answer as the VQA evaluation compares it (the TextVQA variant LLaVA's kit runs: commas and question
    marks dropped and `'s` split off first)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [_CONTRACTION_FIXES.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(answer: str, annotator_answers: Sequence[str]) -> float:
    """The VQA accuracy of one answer against the (ten) annotators' answers, in [0, 1].

    Raises:
        ValueError: no annotator answers.
    """
    if not annotator_answers:
        raise ValueError("VQA accuracy needs the annotators' answers")
    given = normalize_vqa_answer(answer)
    truths = [normalize_vqa_answer(a) for a in annotator_answers]
    scores = []
    for left_out in range(len(truths)):
        matches = sum(1 for i, truth in enumerate(truths) if i != left_out and truth == given)
        scores.append(min(matches / 3.0, 1.0))
    return sum(scores) / len(scores)


# -------------------------------------------------------------------------------------- multiple choice
OPTION_LETTERS = ("A", "B", "C", "D", "E")
_LEADING_LETTER = re.compile(r"^\(?([A-E])(?:[.):]|$)")
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-E])(?:\)|\.|:|(?![A-Za-z]))")
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z])\.")


def choice_letter(answer: str, options: Sequence[str]) -> str | None:
    """The option letter an answer picks, among the first `len(options)` letters, or None.

    In order: the answer is a letter (`B`, `B.`, `(B)`, `B) text`, `B. text`); it is one option's text; exactly
    one distinct option letter stands alone in it ("The answer is B."). MMBench's official evaluator asks
    ChatGPT when these fail; here such an answer picks nothing and counts as wrong.
    """
    letters = OPTION_LETTERS[:len(options)]
    text = answer.strip()
    leading = _LEADING_LETTER.match(text)
    if leading and leading.group(1) in letters:
        return leading.group(1)
    folded = text.rstrip(".").strip().lower()
    by_text = [letter for letter, option in zip(letters, options, strict=False) if option.strip().lower() == folded]
    if len(by_text) == 1:
        return by_text[0]
    found = {letter for letter in _STANDALONE_LETTER.findall(text) if letter in letters}
    return found.pop() if len(found) == 1 else None


def scienceqa_letter(answer: str, options: Sequence[str]) -> str | None:
    """The letter LLaVA's ScienceQA scorer reads: the whole answer is a letter, or it starts `X. `, or it says
    "The answer is X." exactly once; a letter beyond the item's choices picks nothing."""
    letters = OPTION_LETTERS[:len(options)]
    if answer in OPTION_LETTERS:
        letter: str | None = answer
    elif len(answer) >= 3 and answer[0] in OPTION_LETTERS and answer[1:3] == ". ":
        letter = answer[0]
    else:
        said = _THE_ANSWER_IS.findall(answer)
        letter = said[0] if len(said) == 1 else None
    return letter if letter in letters else None


def circular_accuracy(correct_by_index: Mapping[int, bool]) -> tuple[float | None, int]:
    """MMBench's CircularEval: rows `index + k * 1,000,000` are rotations of question `index`; a question is right
    when all its rows are. Returns (accuracy in [0, 1] or None without rows, number of questions)."""
    questions: dict[int, bool] = {}
    for index, correct in correct_by_index.items():
        question = index % 1_000_000
        questions[question] = questions.get(question, True) and correct
    if not questions:
        return None, 0
    return sum(questions.values()) / len(questions), len(questions)


# ------------------------------------------------------------------------------------------------- MME
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_label(answer: str) -> str:
    """`yes`, `no` or `other`, as MME's scorer reads an answer (its first four characters when not exact)."""
    text = answer.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(rows: Iterable[tuple[str, str, str, str]]) -> dict[str, object]:
    """MME's scores from (subtask, image, ground truth `Yes`/`No`, answer) rows.

    Returns:
        `{"subtasks": {name: {"acc", "acc_plus", "score", "questions", "images"}}, "perception", "cognition"}`;
        perception and cognition sum the scores of their subtasks present (None when none is).
    """
    by_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for subtask, image, truth, answer in rows:
        by_image[subtask][image].append(mme_label(answer) == truth.strip().lower())
    subtasks: dict[str, dict[str, float | int]] = {}
    for subtask, images in by_image.items():
        answers = [ok for oks in images.values() for ok in oks]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(oks) for oks in images.values()) / len(images)
        subtasks[subtask] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "questions": len(answers),
                             "images": len(images)}

    def total(names: Sequence[str]) -> float | None:
        present = [float(subtasks[name]["score"]) for name in names if name in subtasks]
        return sum(present) if present else None

    return {"subtasks": subtasks, "perception": total(MME_PERCEPTION), "cognition": total(MME_COGNITION)}


# --------------------------------------------------------------------------------------------- MMMU-Pro
MMMU_PRO_LETTERS = tuple("ABCDEFGHIJ")  # the standard setting has up to ten options
_MMMU_EDGE_MARKS = (",", ".", "!", "?", ";", ":", "'")


def mmmu_pro_letter(answer: str, options: Sequence[str], seed: str) -> tuple[str, bool]:
    """The option letter MMMU-Pro's evaluator reads from an answer, and whether it had to guess.

    In order: after the last `Answer:`, exactly one option letter appearing there; else (the answer stripped of
    edge punctuation, padded with spaces) the letters written `(X)`, else those followed by a space, else those
    followed by a period; else, for an answer of more than five words, the options whose text it contains. Of
    several candidates the one written last wins; with none, a letter is drawn at random (seeded by `seed`).
    """
    letters = list(MMMU_PRO_LETTERS[:len(options)])
    marker = answer.rfind("Answer:")
    if marker != -1:
        tail = answer[marker + len("Answer:"):].strip()
        named = [letter for letter in letters if letter in tail]
        if len(named) == 1:
            return named[0], False
    text = answer
    for mark in _MMMU_EDGE_MARKS:  # one mark at a time, in this order, as the official parser strips them
        text = text.strip(mark)
    text = f" {text} "
    bracketed = [letter for letter in letters if f"({letter})" in text]
    candidates = (bracketed or [letter for letter in letters if f"{letter} " in text]
                  or [letter for letter in letters if f"{letter}." in text])
    by_text = False
    if not candidates and len(text.split()) > 5:
        lowered = text.lower()
        candidates = [letter for letter, option in zip(letters, options, strict=False) if option.lower() in lowered]
        by_text = bool(candidates)
    if not candidates:
        return random.Random(seed).choice(letters), True  # noqa: S311 - the official fallback, not a secret
    if len(candidates) == 1:
        return candidates[0], False
    if by_text:
        where = [text.lower().rfind(options[letters.index(letter)].lower()) for letter in candidates]
    elif bracketed:
        where = [text.rfind(f"({letter})") for letter in candidates]
    else:
        where = [text.rfind(f" {letter} ") for letter in candidates]
    return candidates[where.index(max(where))], False
