"""Tiny judges in each format, built locally and saved in the real on-disk format, for tests and the demo table.

`build_tiny_judge(path, "llama-guard-3", verdict="unsafe\\nS1,S10")` writes a small Llama (Llama Guard 3's
architecture; Mistral for the MD-Judge formats) and a byte-level BPE tokenizer trained here, with
`save_pretrained`; `eta.judges.load_judge(path)` then loads it through `AutoModelForCausalLM.from_pretrained` like
a real judge.

With `verdict=None` the weights are random and the judge writes noise: what a broken or mismatched judge does,
which the evaluation records as malformed verdicts. With a `verdict`, the weights are set so that greedy decoding
writes exactly that text after any prompt of the format: each line of the verdict is one vocabulary entry, the
attention and MLP blocks write nothing (so each position's output depends only on its own token) and the output
layer maps the prompt's last token to the first line, each line to the next and the last to end-of-sequence.
The whole real path (prompt, padding, generate, decode, parse) runs; only the judgement is fixed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from eta.judges.formats import FORMATS

logger = logging.getLogger(__name__)

_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
# InternLM2's chat layout (MD-Judge v0.2 reads its template as the user turn of such a conversation).
_INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(verdict_lines: list[str]):  # -> PreTrainedTokenizerFast
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))  # noqa: S106 - token names, not secrets
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [fmt.template for fmt in FORMATS.values()] + ["safe unsafe [RESULT]: score S1, S10 O1: <|im_end|>"]
    tok.train_from_iterator(corpus * 2, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    if verdict_lines:  # whole lines as single entries, kept verbatim (not normalised, not split)
        tok.add_tokens([AddedToken(line, normalized=False, single_word=False) for line in verdict_lines])
    names = dict(zip(("bos_token", "eos_token", "unk_token", "pad_token"), ("<s>", "</s>", "<unk>", "<pad>"),
                     strict=True))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=4096, **names)
    fast.chat_template = _INTERNLM2_CHAT_TEMPLATE
    return fast


def _config(judge_format: str, tokenizer, *, hidden: int = 64):
    from transformers import LlamaConfig, MistralConfig

    kwargs = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlamaConfig(**kwargs) if judge_format == "llama-guard-3" else MistralConfig(sliding_window=None, **kwargs)
    config.eta_judge_format = judge_format  # a tiny judge says its format; a real one is known by its id
    return config


def _fix_output(model, tokenizer, judge_format: str, verdict_lines: list[str]) -> None:
    """Weights that make greedy decoding write `verdict_lines` after any prompt of `judge_format`."""
    fmt = FORMATS[judge_format]
    sample = fmt.render(tokenizer, "question", "answer")
    start = tokenizer(sample, add_special_tokens=fmt.add_special_tokens)["input_ids"][-1]
    chain = [start, *(tokenizer.convert_tokens_to_ids(line) for line in verdict_lines), tokenizer.eos_token_id]
    if len(set(chain)) != len(chain):
        raise ValueError(f"verdict lines must be distinct vocabulary entries, got {verdict_lines!r}")
    hidden = model.config.hidden_size
    if len(chain) > hidden:
        raise ValueError(f"a verdict of {len(verdict_lines)} lines needs hidden size > {len(chain)}")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embeddings = model.model.embed_tokens.weight
        head = model.lm_head.weight
        head.zero_()
        for k, token in enumerate(chain[:-1]):
            embeddings[token].zero_()
            embeddings[token, k] = 1.0
            head[chain[k + 1], k] = 10.0


def build_tiny_judge(path: str | Path, judge_format: str, *, verdict: str | None = None, seed: int = 0) -> Path:
    """Build and save a tiny judge of `judge_format` into `path` (a directory `load_judge` reads).

    Args:
        verdict: the text it always answers (its lines must differ); None for random weights (noise).
        seed: seeds the random weights.
    """
    from transformers import AutoModelForCausalLM

    if judge_format not in FORMATS:
        raise ValueError(f"unknown judge format {judge_format!r}; choose one of {', '.join(FORMATS)}")
    lines = verdict.splitlines(keepends=True) if verdict else []
    tokenizer = _tokenizer(lines)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(judge_format, tokenizer))
    if verdict:
        _fix_output(model, tokenizer, judge_format, lines)
    model.generation_config.do_sample = False
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "eta-tiny-judge.json").write_text(json.dumps({"format": judge_format, "verdict": verdict, "seed": seed}))
    logger.info("tiny %s judge written to %s", judge_format, path)
    return path
