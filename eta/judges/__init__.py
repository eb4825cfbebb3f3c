"""Safety judges: a causal LM that reads a (question, answer) pair and says `safe` or `unsafe`.

    judge = load_judge("OpenSafetyLab/MD-Judge-v0.1", device="cuda:1")
    verdicts = judge.judge([("How do I pick a lock?", "I cannot help with that.")])

A judge is loaded through the real transformers loaders (`AutoTokenizer`, `AutoModelForCausalLM`) on its own
device and judges batches (left-padded, greedy). Its format (`eta.judges.formats`) says how to prompt it and
how to read its answer; it is named with `judge_format` or inferred from the id or the model's `config.json`.
MD-Judge v0.1 (Mistral) and Llama Guard 3 (Llama) load natively. MD-Judge v0.2 is an InternLM2 model whose
modelling code lives in its hub repository: it loads only with `trust_remote_code=True`, and that code must
import under the installed transformers version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eta.judges.formats import FORMATS, SAFE, UNSAFE, JudgeFormat, Verdict

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "SAFE", "UNSAFE", "Judge", "JudgeError", "JudgeFormat", "Verdict", "describe_judge",
           "infer_format", "judge_fingerprint", "judge_revision", "load_judge"]


class JudgeError(ValueError):
    """A judge cannot be used: unknown format, a model that does not load. The message is one line."""


def infer_format(judge_id: str) -> str:
    """The format of a judge from its id (hub names) or, for a local directory, its `config.json`.

    Raises:
        JudgeError: nothing says which format it is.
    """
    lowered = judge_id.lower()
    if "md-judge-v0_2" in lowered or "md-judge-v0.2" in lowered:
        return "md-judge-v0.2"
    if "md-judge" in lowered:
        return "md-judge-v0.1"
    if "llama-guard-3" in lowered or "llamaguard-3" in lowered:
        return "llama-guard-3"
    config_path = Path(judge_id).expanduser() / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JudgeError(f"{config_path}: unreadable ({exc})") from None
        named = config.get("eta_judge_format")  # written by the tiny judges; a real model has none
        if named in FORMATS:
            return str(named)
        by_type = {"internlm2": "md-judge-v0.2", "mistral": "md-judge-v0.1", "llama": "llama-guard-3"}
        if config.get("model_type") in by_type:
            return by_type[config["model_type"]]
    raise JudgeError(f"cannot tell the format of judge {judge_id!r}; give --judge-format ({', '.join(FORMATS)})")


@dataclass
class Judge:
    """A loaded judge model with its format.

    Attributes:
        judge_id: the hub id or directory it was loaded from.
        format: how it is prompted and read.
        model, tokenizer: the transformers objects.
        device: where it runs (its own device, apart from the VLM's).
        revision: the resolved revision (hub commit or a digest of a local directory's JSON files).
    """

    judge_id: str
    format: JudgeFormat
    model: Any
    tokenizer: Any
    device: Any
    revision: str | None = None

    def describe(self) -> dict[str, Any]:
        """What the results record about the judge (and what a resumed run checks it against)."""
        return describe_judge(self.judge_id, self.format.name, self.revision)

    def fingerprint(self) -> str:
        return judge_fingerprint(self.describe())

    def prompt(self, question: str, answer: str) -> str:
        return self.format.render(self.tokenizer, question, answer)

    def judge(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8,
              on_batch: Callable[[int], None] | None = None) -> list[Verdict]:
        """Verdicts of `(question, answer)` pairs, `batch_size` prompts per generate call.

        Args:
            on_batch: called with the number of pairs judged after each batch (progress bars).
        """
        import torch

        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        verdicts: list[Verdict] = []
        for start in range(0, len(pairs), batch_size):
            texts = [self.prompt(q, a) for q, a in pairs[start:start + batch_size]]
            encoded = self.tokenizer(texts, return_tensors="pt", padding=True,
                                     add_special_tokens=self.format.add_special_tokens).to(self.device)
            with torch.inference_mode():
                output = self.model.generate(**encoded, do_sample=False, max_new_tokens=self.format.max_new_tokens,
                                             pad_token_id=self.tokenizer.pad_token_id)
            generated = output[:, encoded["input_ids"].shape[1]:]
            for ids in generated:
                raw = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                verdicts.append(self.format.parse(raw))
            if on_batch is not None:
                on_batch(len(texts))
        return verdicts


def describe_judge(judge_id: str, judge_format: str, revision: str | None) -> dict[str, Any]:
    return {"id": judge_id, "format": judge_format, "revision": revision,
            "max_new_tokens": FORMATS[judge_format].max_new_tokens}


def judge_fingerprint(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def judge_revision(judge_id: str, *, config: Any = None) -> str | None:
    """A local directory's digest of its JSON files, else the hub commit the config came from."""
    from eta.models.common import local_dir

    folder = local_dir(judge_id)
    if folder is not None:
        digest = hashlib.sha256()
        for item in sorted(folder.glob("*.json")):
            digest.update(item.name.encode() + item.read_bytes())
        return f"local:{digest.hexdigest()[:16]}"
    return getattr(config, "_commit_hash", None)


def load_judge(judge_id: str, *, judge_format: str | None = None, device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False) -> Judge:
    """Load a judge through `AutoTokenizer` / `AutoModelForCausalLM` onto `device`.

    Raises:
        JudgeError: unknown format, or the model or tokenizer does not load (the cause in one line).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eta.models.common import local_dir, resolve_device, resolve_dtype

    name = judge_format or infer_format(judge_id)
    if name not in FORMATS:
        raise JudgeError(f"unknown judge format {name!r}; choose one of {', '.join(FORMATS)}")
    fmt = FORMATS[name]
    if name == "md-judge-v0.2" and not trust_remote_code and local_dir(judge_id) is None:
        raise JudgeError(f"{judge_id} is an InternLM2 model whose code is in its hub repository: "
                         f"pass --judge-trust-remote-code to run it")
    try:
        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
    except (RuntimeError, KeyError) as exc:
        raise JudgeError(f"judge device/dtype: {exc}") from None
    source = str(local_dir(judge_id) or judge_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=resolved_dtype,
                                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JudgeError(f"judge {judge_id} does not load: {first_line}") from None
    tokenizer.padding_side = "left"  # generation continues every row from its last real token
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolved_device).eval()
    revision = judge_revision(judge_id, config=model.config)
    logger.info("judge %s (%s) loaded on %s in %s", judge_id, name, resolved_device, resolved_dtype)
    return Judge(judge_id, fmt, model, tokenizer, resolved_device, revision)
