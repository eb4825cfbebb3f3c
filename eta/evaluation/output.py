"""Result files that appear whole or not at all: written beside their final path, then renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def publish(temporary: str, path: Path) -> None:
    """Rename a finished temporary file into place with the permissions a plain `open` would have given it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def save_figure(figure: Any, path: Path, *, dpi: int) -> Path:
    """Write a matplotlib `figure` as a PNG at `path` through a temporary file renamed into place, then close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".png", delete=False)
    handle.close()
    try:
        figure.savefig(handle.name, dpi=dpi, format="png")
        publish(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return path
