"""Which broker the workers and the API talk to, and the embedded one that needs no server.

`REDIS_URL` (or `ETA_BROKER_URL`) names a real broker. Without one, messages are files under
`ETA_DATA_DIR/broker`: kombu's filesystem transport, with two races of its stock channel closed:

- a message file is written in place, so a consumer listing the folder can read it half-written: here it is
  written to a staging folder and renamed into the queue folder (atomic on one filesystem);
- a consumer claims a file by moving it to the system temporary folder, which on another filesystem is a
  copy then a delete, so two consumers can both read it: here the claim is a rename inside the broker folder.

Like every virtual transport it keeps unacknowledged messages in the consumer's memory: a worker killed
mid-task loses its message, and the sweeper re-enqueues the job (Postgres or SQLite is the source of truth).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

from eta.settings import Settings

logger = logging.getLogger(__name__)

# URL scheme of the embedded broker (registered with kombu when this module is imported).
EMBEDDED_SCHEME = "etafs"
TRANSPORT_ALIASES[EMBEDDED_SCHEME] = "workers.broker:EmbeddedTransport"


class EmbeddedChannel(filesystem.Channel):
    """Filesystem channel whose writes and claims are single renames."""

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        staging = Path(self.transport_options["staging_folder"])
        tmp = staging / name
        tmp.write_bytes(str_to_bytes(dumps(payload)))
        os.replace(tmp, Path(self.data_folder_out) / name)

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        suffix = f"{queue}.msg"
        claimed_dir = Path(self.transport_options["claimed_folder"])
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != suffix:
                continue
            claimed = claimed_dir / f"{os.getpid()}-{name}"
            try:
                os.rename(Path(self.data_folder_in) / name, claimed)
            except FileNotFoundError:
                continue  # another consumer claimed it first
            try:
                payload = claimed.read_bytes()
            finally:
                claimed.unlink(missing_ok=True)
            return loads(bytes_to_str(payload))
        raise Empty()


class EmbeddedTransport(filesystem.Transport):
    Channel = EmbeddedChannel
    driver_name = "eta-embedded"


def embedded_broker_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser() / "broker"


def broker_url(settings: Settings) -> str:
    """`ETA_BROKER_URL`, else `REDIS_URL`, else the embedded broker."""
    return settings.broker.url or f"{EMBEDDED_SCHEME}://localhost/"


def is_embedded(settings: Settings) -> bool:
    return broker_url(settings).startswith(f"{EMBEDDED_SCHEME}://")


def transport_options(settings: Settings) -> dict[str, Any]:
    """Options of the broker transport: folders for the embedded one, timeouts and key prefix for Redis."""
    if is_embedded(settings):
        root = embedded_broker_dir(settings)
        folders = {name: root / name for name in ("queue", "staging", "claimed", "control")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "staging_folder": str(folders["staging"]),
            "claimed_folder": str(folders["claimed"]),
            "control_folder": str(folders["control"]),
            # Seconds between polls of an empty queue folder: the latency floor of each stage hand-off.
            "polling_interval": 0.05,
        }
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.broker.connect_timeout_s,
        "socket_timeout": max(settings.broker.connect_timeout_s, 10.0),
        "visibility_timeout": settings.broker.visibility_timeout_s,
        # Ten priority levels (0 first), one Redis list each: tenants take turns (`workers.enqueue.fair_priority`).
        "priority_steps": list(range(10)),
        "queue_order_strategy": "priority",
        "health_check_interval": 25,
    }
    if settings.broker.key_prefix:
        options["global_keyprefix"] = settings.broker.key_prefix
    return options
