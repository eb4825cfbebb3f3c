"""The model checks `eta worker` runs before it starts its pool, in a child process of their own.

Checking (and, for the tiny test models, building) the models runs torch: a process that ran torch has
started torch's thread pool (and, on a GPU host, may have initialised CUDA), and a process forked from it
inherits a pool whose threads do not exist in the child: its first parallel torch operation waits for ever
(CUDA refuses outright). The worker's main process forks its pool processes, so it never runs torch itself:
`run_preflight` runs `python -m workers.preflight ROLE...` and reads its one-line verdict.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

# What the child prints (on stderr, one line) when the models cannot be loaded.
_REFUSED_EXIT = 2


class PreflightError(Exception):
    """The models of the worker's queues cannot be loaded (one line naming the model, the cause and the fix)."""


def run_preflight(roles: Sequence[str], *, timeout_s: float = 3600.0) -> None:
    """Check (and build, for the tiny set) the models of `roles` in a child process.

    Raises:
        PreflightError: the child refused the models, or died; its message says why.
    """
    if not roles:
        return
    argv = [sys.executable, "-m", "workers.preflight", *map(str, roles)]
    try:
        done = subprocess.run(argv, env=os.environ.copy(), stdout=subprocess.DEVNULL,  # noqa: S603 - our own module
                              stderr=subprocess.PIPE, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PreflightError(f"checking the models ({', '.join(roles)}) took longer than {timeout_s:.0f}s") from exc
    if done.returncode == 0:
        return
    lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
    if done.returncode == _REFUSED_EXIT and lines:
        raise PreflightError(lines[-1])
    tail = lines[-1] if lines else "no output"
    raise PreflightError(f"checking the models ({', '.join(roles)}) failed with exit status {done.returncode}: {tail}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m workers.preflight ROLE...`: exit 0 when the selected models of these roles can load."""
    from eta.models.selection import ModelLoadError, ModelSelectionError, preflight, selection_from_settings
    from eta.settings import get_settings

    roles = list(sys.argv[1:] if argv is None else argv)
    try:
        preflight(selection_from_settings(get_settings()), roles)
    except (ModelLoadError, ModelSelectionError) as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return _REFUSED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
