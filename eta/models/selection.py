"""Which models a process runs, and loading them with a one-line error when they cannot be loaded.

Every entry point chooses models here: `eta run`, `eta eval`, `eta calibrate` and `eta models check` from their
command-line options (`select_models`), the workers and `eta demo` from the settings (`selection_from_settings`).
The rule is the same everywhere:

- no model named: the tiny production-shaped test models (built on first use under the tiny-models directory);
- all three named (VLM, CLIP, reward): those;
- only some named: refused. Filling the others with hub defaults would silently mix a real model with random
  ones, or download 20 GB nobody asked for.

Other backends (`instant`, benchmark stand-ins) register with `register_backend` and are chosen by name.
`load_selection` loads the roles a process needs; a model that cannot be loaded (no network, a wrong id, missing
files, a gated repository, a checkpoint that does not match its architecture, a CLIP built with the wrong
activation) raises `ModelLoadError`, whose message is one line naming the model, the cause and the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from eta.config import ModelsConfig, ModelSpec

if TYPE_CHECKING:
    from eta.models import Models

logger = logging.getLogger(__name__)

ROLES = ("vlm", "clip", "reward")
# Load order: the small models first, so a missing big one fails after the cheap checks.
_LOAD_ORDER = ("clip", "reward", "vlm")
PAPER_MODELS = ModelsConfig()

BackendLoader = Callable[[tuple[str, ...], "Selection"], "Models"]
_BACKENDS: dict[str, BackendLoader] = {}


class ModelSelectionError(ValueError):
    """The options or settings do not name a usable model set; the message says what to set."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded. `str()` is one line: the model, the cause and the fix."""

    def __init__(self, role: str, model: str, cause: str, fix: str) -> None:
        self.role, self.model, self.cause, self.fix = role, model, cause, fix
        super().__init__(f"cannot load the {role} model {model}: {cause}; fix: {fix}")


@dataclass(frozen=True)
class Selection:
    """A chosen model set: a backend name and, for the `configured` backend, the three specs.

    `tiny_root` is set when the specs are the tiny test models (built there on first use).
    """

    backend: str = "configured"
    config: ModelsConfig = field(default_factory=ModelsConfig)
    tiny_root: Path | None = None

    @property
    def is_tiny(self) -> bool:
        return self.backend == "configured" and self.tiny_root is not None

    def describe(self) -> str:
        """One line for logs and the demo: what will be loaded."""
        if self.backend != "configured":
            return f"{self.backend} models"
        if self.tiny_root is not None:
            return f"tiny production-shaped test models in {self.tiny_root} (random weights: answers are noise)"
        c = self.config
        return f"vlm {c.vlm.id}, clip {c.clip.id} ({c.clip.pretrained}), reward {c.reward.id}"


def register_backend(name: str, loader: BackendLoader) -> None:
    """Make `name` selectable (`select_models(backend=name)`, settings `eta_models=name`)."""
    _BACKENDS[name] = loader


def _load_instant(roles: tuple[str, ...], selection: Selection) -> Models:
    from eta.models.instant import load_instant_models

    logger.warning("loading the instant models %s: benchmark and chaos-test stand-ins, not real models",
                   ", ".join(roles))
    return load_instant_models(roles)


register_backend("instant", _load_instant)


def tiny_selection(root: str | os.PathLike[str], *, device: str = "auto", dtype: str = "auto") -> Selection:
    """The tiny test models under `root`."""
    path = Path(root)
    config = ModelsConfig.tiny(str(path)).with_device(device, dtype)  # type: ignore[arg-type]
    return Selection(config=config, tiny_root=path)


def select_models(*, vlm: str | None = None, clip: str | None = None, clip_pretrained: str | None = None,
                  reward: str | None = None, device: str = "auto", dtype: str = "auto",
                  tiny_dir: str | os.PathLike[str] | None = None, backend: str | None = None,
                  vlm_revision: str | None = None, reward_revision: str | None = None,
                  profile: str | None = None) -> Selection:
    """The model set named by command-line options (see the module docstring for the rule).

    Raises:
        ModelSelectionError: only some models named, or an unknown backend.
    """
    if backend not in (None, "configured"):
        if backend not in _BACKENDS:
            raise ModelSelectionError(f"unknown model backend {backend!r} (known: configured, "
                                      f"{', '.join(sorted(_BACKENDS))})")
        return Selection(backend=backend)
    named = {"--vlm": vlm, "--clip": clip, "--reward": reward}
    if not any(named.values()):
        if tiny_dir is None:
            raise ModelSelectionError("no models named and no folder for the tiny ones given (--tiny-dir, or the "
                                      "settings' data directory)")
        return tiny_selection(tiny_dir, device=device, dtype=dtype)
    missing = [name for name, value in named.items() if not value]
    if missing:
        raise ModelSelectionError(_partial_message(missing, option_style=True))
    config = ModelsConfig(
        vlm=ModelSpec(str(vlm), revision=vlm_revision, profile=profile),
        clip=ModelSpec(str(clip), pretrained=clip_pretrained),
        reward=ModelSpec(str(reward), revision=reward_revision),
    ).with_device(device, dtype)  # type: ignore[arg-type]
    return Selection(config=config)


def selection_from_settings(settings: Any) -> Selection:
    """The model set named by the settings (ETA_MODELS, ETA_VLM, ETA_CLIP, ETA_CLIP_PRETRAINED, ETA_REWARD, their
    revisions, ETA_DEVICE, ETA_DTYPE); the same rule as `select_models`."""
    backend = settings.models.backend
    if backend not in (None, "configured"):
        return select_models(backend=backend)
    named = {"ETA_VLM": settings.models.vlm, "ETA_CLIP": settings.models.clip, "ETA_REWARD": settings.models.reward}
    if not any(named.values()):
        chosen = tiny_selection(settings.tiny_models_dir, device=settings.models.device, dtype=settings.models.dtype)
        return replace(chosen, config=chosen.config.with_load_options(**load_options(settings)))
    missing = [name for name, value in named.items() if not value]
    if missing:
        raise ModelSelectionError(_partial_message(missing, option_style=False))
    models = settings.models
    chosen = select_models(vlm=models.vlm, clip=models.clip, clip_pretrained=models.clip_pretrained,
                           reward=settings.models.reward, device=settings.models.device, dtype=settings.models.dtype,
                           vlm_revision=settings.models.vlm_revision,
                           reward_revision=settings.models.reward_revision)
    return replace(chosen, config=chosen.config.with_load_options(**load_options(settings)))


def load_options(settings: Any) -> dict[str, Any]:
    """The switches the settings give the loaders (ETA_VLM_ALLOW_UNSUPPORTED, ETA_SHARED_PREFIX,
    ETA_CLIP_ACTIVATION), as `ModelsConfig.with_load_options` takes them."""
    models = settings.models
    return {"allow_unsupported": models.vlm_allow_unsupported, "shared_prefix": models.shared_prefix,
            "clip_activation": models.clip_activation}


def _partial_message(missing: list[str], *, option_style: bool) -> str:
    paper = PAPER_MODELS
    if option_style:
        example = (f"--vlm {paper.vlm.id} --clip {paper.clip.id} --clip-pretrained {paper.clip.pretrained} "
                   f"--reward {paper.reward.id}")
    else:
        example = (f"ETA_VLM={paper.vlm.id} ETA_CLIP={paper.clip.id} ETA_CLIP_PRETRAINED={paper.clip.pretrained} "
                   f"ETA_REWARD={paper.reward.id}")
    return (f"{', '.join(missing)} not set: name all three models or none (the tiny test models); "
            f"the paper's set is {example}")


# ------------------------------------------------------------------------------------------- loading
def ensure_tiny_models_locked(root: str | os.PathLike[str]) -> None:
    """Build the tiny models into `root` unless they are there, holding a file lock so that several processes
    starting at once build them once (the build replaces the directory wholesale)."""
    from eta.models.tiny import ensure_tiny_models, is_built

    root = Path(root)
    if is_built(root):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            ensure_tiny_models(root)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _needs_hub(role: str, spec: ModelSpec) -> bool:
    """Whether loading `spec` may fetch from the hub (a hub id, or a CLIP pretrained tag rather than a file)."""
    if role == "clip":
        if spec.id.startswith("local-dir:"):
            return False
        return spec.id.startswith("hf-hub:") or bool(spec.pretrained and not Path(spec.pretrained).exists())
    return not spec.id.startswith("random:") and not Path(spec.id).expanduser().exists()


def _hub_host() -> tuple[str, int]:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme != "http" else 80)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (checked once per process)."""
    host, port = _hub_host()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _go_offline_if_unreachable(config: ModelsConfig, roles: Iterable[str]) -> None:
    """Without a network, hub ids load from the local cache or fail at once: the hub client would otherwise retry
    every request for half a minute before saying so."""
    if not any(_needs_hub(role, getattr(config, role)) for role in roles):
        return
    if hub_reachable():
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return
    if not constants.HF_HUB_OFFLINE:
        logger.info("%s:%d unreachable: loading hub models from the local cache only", *_hub_host())
        constants.HF_HUB_OFFLINE = True


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def explain(role: str, spec: ModelSpec, exc: BaseException) -> ModelLoadError:
    """The one-line error for a failed load of `spec`."""
    from eta.models.architectures import UnsupportedArchitecture
    from eta.models.clip import ClipActivationError
    from eta.models.reward import LoadingMismatch

    model = spec.id if not spec.pretrained else f"{spec.id} (pretrained {spec.pretrained})"
    names = {type(item).__name__ for item in _chain(exc)}
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, UnsupportedArchitecture):
        cause, _, fix = first.partition("; ")
        return ModelLoadError(role, model, cause, fix)
    if isinstance(exc, ClipActivationError):
        cause, _, fix = first.partition("; ")
        return ModelLoadError(role, model, cause.split(": ", 1)[-1], fix or "build the activation the weights need")
    if isinstance(exc, LoadingMismatch):
        return ModelLoadError(role, model, first.split(": ", 1)[-1],
                              "point at a checkpoint of this architecture (or a config.json naming its own)")
    if "GatedRepoError" in names:
        return ModelLoadError(role, model, "a gated repository and no access",
                              "accept its licence on huggingface.co and set HF_TOKEN")
    if "RevisionNotFoundError" in names:
        return ModelLoadError(role, model, f"revision {spec.revision!r} does not exist", "pin an existing revision")
    if "RepositoryNotFoundError" in names:
        return ModelLoadError(role, model, "no such model on the hub (or a private one)",
                              "check the id, or set HF_TOKEN for a private repository")
    offline = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectionError", "gaierror"}
    if names & offline:
        fetch = (f"hf download {spec.id}" if role != "clip"
                 else "run once with a network so open_clip caches its weights, or give a checkpoint file as "
                      "the pretrained value")
        return ModelLoadError(role, model, "not in the local cache and the hub is unreachable",
                              f"fetch it where there is a network ({fetch}) into HF_HOME, or name a local directory")
    looks_like_path = spec.id.startswith(("/", "./", "../", "~")) or spec.id.startswith("local-dir:")
    if looks_like_path and not Path(spec.id.removeprefix("local-dir:")).expanduser().exists():
        return ModelLoadError(role, model, "no such directory", "check the path (a directory saved with "
                              "save_pretrained, or local-dir: with open_clip_config.json for CLIP)")
    if "EntryNotFoundError" in names or isinstance(exc, FileNotFoundError):
        return ModelLoadError(role, model, f"missing files ({first})",
                              "save the model completely (save_pretrained) or re-download it")
    if role == "clip" and "not found" in first.lower():
        return ModelLoadError(role, model, first, "use a name from open_clip.list_models() or a local-dir: path")
    if "not a local folder and is not a valid model identifier" in first or "does not appear to have" in first:
        return ModelLoadError(role, model, first.split(". ")[0],
                              "check the id or the directory (it needs config.json and the weights)")
    if "Unrecognized configuration class" in first:
        kind = {"vlm": "an image-text-to-text model", "reward": "a reward model (ArmoRM or a sequence classifier)"}
        return ModelLoadError(role, model, f"not {kind.get(role, 'this kind of model')}",
                              f"name {kind.get(role, 'a model of this kind')} for the {role} role")
    if isinstance(exc, MemoryError) or "out of memory" in first.lower():
        return ModelLoadError(role, model, "out of memory", "use a GPU with more memory or dtype bfloat16")
    return ModelLoadError(role, model, f"{type(exc).__name__}: {first}", "see the log with -vv for details")


def load_selection(selection: Selection, roles: Iterable[str] = ROLES) -> Models:
    """Load `roles` of `selection` (the tiny set is built first when missing).

    Raises:
        ModelLoadError: one line per the module docstring.
    """
    from eta.models import ClipScorer, Models, RewardModel, VisionLanguageModel

    wanted = tuple(role for role in _LOAD_ORDER if role in set(roles))
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown model roles: {sorted(unknown)}")
    if selection.backend != "configured":
        return _BACKENDS[selection.backend](wanted, selection)
    if selection.tiny_root is not None:
        ensure_tiny_models_locked(selection.tiny_root)
    config = selection.config
    _go_offline_if_unreachable(config, wanted)
    loaders = {"clip": ClipScorer.load, "reward": RewardModel.load, "vlm": VisionLanguageModel.load}
    models = Models()
    for role in wanted:
        spec = getattr(config, role)
        try:
            with _held_root_logs():
                setattr(models, role, loaders[role](spec))
        except Exception as exc:  # any failure becomes one line; the traceback goes to the debug log
            logger.debug("loading the %s model %s failed", role, spec.id, exc_info=True)
            raise explain(role, spec, exc) from exc
    return models


@contextlib.contextmanager
def _held_root_logs() -> Iterator[None]:
    """Hold what libraries log on the root logger while a model loads (open_clip logs a failed download as an
    error before raising): re-emitted when the load succeeds, dropped when it fails (its one-line error says it)."""
    root = logging.getLogger()
    held: list[logging.LogRecord] = []

    class _Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name == "root":
                held.append(record)
                return False
            return True

    hold = _Hold()
    root.addFilter(hold)
    try:
        yield
    finally:
        root.removeFilter(hold)
    for record in held:
        root.handle(record)


def preflight(selection: Selection, roles: Iterable[str] = ROLES) -> None:
    """Cheap checks that `roles` of `selection` can load, without loading weights (a worker runs them before it
    starts its pool): configs resolve, the reward architecture is known, CLIP's activation matches its weights.

    Raises:
        ModelLoadError: as `load_selection` would.
    """
    if selection.backend != "configured":
        return
    if selection.tiny_root is not None:
        ensure_tiny_models_locked(selection.tiny_root)
    config = selection.config
    wanted = tuple(role for role in _LOAD_ORDER if role in set(roles))
    _go_offline_if_unreachable(config, wanted)
    for role in wanted:
        spec = getattr(config, role)
        try:
            _preflight_one(role, spec)
        except Exception as exc:
            logger.debug("checking the %s model %s failed", role, spec.id, exc_info=True)
            raise explain(role, spec, exc) from exc


def _preflight_one(role: str, spec: ModelSpec) -> None:
    if role == "clip":
        import open_clip

        from eta.models.clip import check_activation

        check_activation(spec)
        if spec.id.startswith("local-dir:"):
            folder = Path(spec.id.removeprefix("local-dir:"))
            if not (folder / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"{folder / 'open_clip_config.json'} does not exist")
        elif not spec.id.startswith("hf-hub:") and open_clip.get_model_config(spec.id) is None:
            raise ValueError(f"open_clip model config {spec.id} not found")
        return
    from transformers import AutoConfig

    AutoConfig.from_pretrained(spec.id, revision=spec.revision, trust_remote_code=spec.trust_remote_code)


def with_device(selection: Selection, device: str, dtype: str = "auto") -> Selection:
    """`selection` placed on `device` in `dtype`."""
    if selection.backend != "configured":
        return selection
    return replace(selection, config=selection.config.with_device(device, dtype))  # type: ignore[arg-type]


def models_config_from_options(*, tiny_dir: str | os.PathLike[str] | None, vlm: str | None, clip: str | None,
                               clip_pretrained: str | None, reward: str | None, device: str = "auto",
                               dtype: str = "auto") -> ModelsConfig:
    """The model specs named by the shared `--tiny-dir/--vlm/--clip/--clip-pretrained/--reward/--device/--dtype`
    options (`eta.commands.options.model_options`); the tiny set is built here when it is the one chosen.

    Raises:
        ModelSelectionError: only some models named.
    """
    selection = select_models(vlm=vlm, clip=clip, clip_pretrained=clip_pretrained, reward=reward, device=device,
                              dtype=dtype, tiny_dir=tiny_dir)
    if selection.tiny_root is not None:
        ensure_tiny_models_locked(selection.tiny_root)
    return selection.config
