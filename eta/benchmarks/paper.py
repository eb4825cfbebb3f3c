"""The numbers the ETA paper reports, to print beside a reproduction.

Source: Yi Ding, Bolian Li, Ruqi Zhang, "ETA: Evaluating Then Aligning Safety of Vision Language Models at
Inference Time", ICLR 2025 (arXiv:2410.06625), Table 1: unsafe rate (USR, %, judged by MD-Judge) of
LLaVA-1.5-7B without a defence ("vanilla") and with ETA. The cross-modality attack is the visual adversarial
example attack (Qi et al. 2024) with its unconstrained image.
"""

from __future__ import annotations

PAPER_CITATION = ("Ding, Li, Zhang. ETA: Evaluating Then Aligning Safety of Vision Language Models at Inference "
                  "Time. ICLR 2025 (arXiv:2410.06625), Table 1")

# benchmark -> model -> {"usr_vanilla": %, "usr_eta": %}; only the cells the paper reports.
PAPER_TABLE_1: dict[str, dict[str, dict[str, float]]] = {
    "spa-vl-harm": {"llava-1.5-7b": {"usr_vanilla": 46.04, "usr_eta": 16.98}},
    "mm-safetybench": {"llava-1.5-7b": {"usr_vanilla": 40.46, "usr_eta": 15.83}},
    "figstep": {"llava-1.5-7b": {"usr_vanilla": 58.60, "usr_eta": 7.80}},
    "cross-modal": {"llava-1.5-7b": {"usr_vanilla": 97.50, "usr_eta": 22.50}},
}

PAPER_MODEL = "llava-1.5-7b"


def paper_values(benchmark: str, model: str = PAPER_MODEL) -> dict[str, float] | None:
    """The paper's USR (vanilla, ETA) in percent for `benchmark`, or None where the paper has no number."""
    return PAPER_TABLE_1.get(benchmark, {}).get(model)


# ---------------------------------------------------------------------------------------- general ability
GENERAL_ABILITY_CITATION = ("Ding, Li, Zhang. ETA (ICLR 2025, arXiv:2410.06625), general-ability results of "
                            "LLaVA-1.5-7B with and without ETA")

# benchmark -> model -> {"vanilla": score, "eta": score}. Only the cell whose value we could read from the
# paper's text (its abstract-level claim "MMBench 64.60 -> 64.69"); the paper also reports MME, ScienceQA,
# TextVQA, VQAv2 and MMMU-Pro (and other backbones than LLaVA-1.5-7B), but its tables were not readable from here,
# so those cells stay empty rather than guessed. Looked in (2026-12): the code repository DripNowhy/ETA (README in
# every version, the project page ETA.html, scripts/, llava/eval/: no results file), and the stored copies of the
# paper's arXiv HTML, abstract and ICLR proceedings pages, whose searchable text stops at the abstract.
# The paper's MMBench figure comes from MMBench's evaluation server (its scripts/eta_mmbench.sh uploads the dev
# answers), which scores with CircularEval: it sits beside the CircularEval accuracy.
PAPER_GENERAL_ABILITY: dict[str, dict[str, dict[str, float]]] = {
    "mmbench": {"llava-1.5-7b": {"vanilla": 64.60, "eta": 64.69}},
}


def paper_ability_values(benchmark: str, model: str = PAPER_MODEL) -> dict[str, float] | None:
    """The paper's general-ability score (vanilla, ETA) for `benchmark`, or None where we have no number."""
    return PAPER_GENERAL_ABILITY.get(benchmark, {}).get(model)
