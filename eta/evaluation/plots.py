"""The calibration histogram: s_pre of safe and unsafe images, with the current and the suggested `tau_pre`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eta.evaluation.output import save_figure
from eta.evaluation.run import Calibration


def plot_calibration(calibration: Calibration, path: Path, *, tau_pre: float, title: str | None = None) -> Path:
    """Histograms of s_pre for safe and unsafe images, with the current and the suggested threshold.

    Written to a temporary file and renamed, like the results.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = calibration.safe + calibration.unsafe
    low, high = min([*every, tau_pre]), max([*every, tau_pre])
    pad = (high - low) * 0.05 or 0.01
    bins = np.linspace(low - pad, high + pad, 31).tolist()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.hist(calibration.safe, bins=bins, alpha=0.6, color="tab:blue", label=f"safe (n={len(calibration.safe)})")
    axes.hist(calibration.unsafe, bins=bins, alpha=0.6, color="tab:red",
              label=f"unsafe (n={len(calibration.unsafe)})")
    axes.axvline(tau_pre, color="black", linestyle="--", label=f"tau_pre = {tau_pre:.4g} (current)")
    suggested = calibration.report.get("tau_pre")
    if suggested is not None:
        axes.axvline(suggested, color="tab:green", linestyle="-",
                     label=f"tau_pre = {suggested:.4g} (FPR <= {calibration.report['target_fpr']:g})")
    auc = calibration.report.get("roc_auc")
    axes.set_title(title or f"Pre-evaluation s_pre = cos(CLIP(image), CLIP(safety prompt)); "
                            f"AUC {'n/a' if auc is None else f'{auc:.3f}'}")
    axes.set_xlabel("s_pre (flag the image when s_pre >= tau_pre)")
    axes.set_ylabel("images")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path, dpi=120)
