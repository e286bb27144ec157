"""Module checkpoints in the object store: ``models/<name>/<version>/`` (docs/architecture.md, "Data contracts and object layout").

Each checkpoint is one safetensors object per module (tensors only: loading never unpickles), a
``config.json`` and a ``_SUCCESS`` marker written last. ``models/<name>/_latest`` names the newest
complete version and moves only after that version's marker is written, so a reader resolving
"latest" never sees half a checkpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from icg_core import layout
from icg_core.storage import SUCCESS, ObjectStore, StorageError

log = logging.getLogger(__name__)

LATEST_VERSION = "latest"


class CheckpointError(StorageError):
    """A checkpoint is missing, incomplete or names a module it does not hold."""


def checkpoint_prefix(name: str, version: str) -> str:
    """The key prefix of one checkpoint version."""
    try:
        return layout.model(name, version)
    except StorageError as exc:
        raise CheckpointError(str(exc)) from None


def _tensors(module: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    # safetensors wants contiguous, unshared CPU tensors.
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}


def save_module_checkpoint(
    store: ObjectStore,
    name: str,
    version: str,
    modules: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
    config: dict[str, Any],
    *,
    set_latest: bool = True,
) -> str:
    """Write modules' weights + config as ``models/<name>/<version>/`` and move ``_latest`` to it.

    Args:
        store: the object store.
        name: model name, e.g. ``"icg_generator"``.
        version: version string (no ``/``), e.g. a ds or a content hash.
        modules: module name -> ``nn.Module`` (its ``state_dict``) or a tensor mapping
            (e.g. ``MetaTokenEncoder.trainable_state_dict()``).
        config: JSON-serializable configuration needed to rebuild the modules.
        set_latest: move ``models/<name>/_latest`` to this version after the write.

    Returns:
        The checkpoint's URI prefix.
    """
    prefix = checkpoint_prefix(name, version)
    store.delete(layout.model_marker(name, version))  # a rewrite is incomplete until its marker is back
    files: dict[str, str] = {}
    for module_name, module in modules.items():
        payload = save_safetensors(_tensors(module), metadata={"module": module_name})
        key = layout.model_file(name, version, f"{module_name}.safetensors")
        store.put_bytes(key, payload)
        files[module_name] = hashlib.sha256(payload).hexdigest()
    store.put_json(layout.model_config(name, version), {"name": name, "version": version, "config": config})
    store.put_json(
        layout.model_marker(name, version),
        {"modules": files, "written_at": dt.datetime.now(dt.UTC).isoformat()},
    )
    if set_latest:
        layout.set_latest(store, name, version)
    log.info("checkpoint saved: name=%s version=%s modules=%s", name, version, sorted(files))
    return store.uri(prefix)


def resolve_version(store: ObjectStore, name: str, version: str = LATEST_VERSION) -> str:
    """``version`` itself, or for ``"latest"`` the version ``models/<name>/_latest`` names."""
    if version != LATEST_VERSION:
        return version
    latest = layout.latest_version(store, name)
    if latest is None:
        raise CheckpointError(
            f"no saved checkpoint of {name!r} (missing {layout.latest_pointer_uri(store, name)})"
        )
    return latest


def checkpoint_exists(store: ObjectStore, name: str, version: str = LATEST_VERSION) -> bool:
    """Whether a complete checkpoint exists (``"latest"`` allowed)."""
    try:
        resolved = resolve_version(store, name, version)
    except CheckpointError:
        return False
    return store.exists(layout.model_marker(name, resolved))


def checkpoint_config(store: ObjectStore, name: str, version: str) -> dict[str, Any]:
    """The config a checkpoint (or model folder) version was saved with."""
    return dict(store.get_json(layout.model_config(name, version))["config"])


def load_module_checkpoint(
    store: ObjectStore, name: str, version: str = LATEST_VERSION
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_module_checkpoint`.

    Args:
        store: the object store.
        name: model name.
        version: a version, or ``"latest"``.

    Returns:
        (module name -> state dict of CPU tensors, the config dict as saved). Call
        :func:`resolve_version` first to know (and pin) which version "latest" is.
    """
    resolved = resolve_version(store, name, version)
    prefix = checkpoint_prefix(name, resolved)
    if not store.exists(layout.model_marker(name, resolved)):
        raise CheckpointError(f"checkpoint {store.uri(prefix)} is missing or incomplete (no {SUCCESS})")
    manifest = store.get_json(layout.model_marker(name, resolved))
    states: dict[str, dict[str, torch.Tensor]] = {}
    for module_name, digest in manifest["modules"].items():
        payload = store.get_bytes(layout.model_file(name, resolved, f"{module_name}.safetensors"))
        if hashlib.sha256(payload).hexdigest() != digest:
            raise CheckpointError(
                f"{store.uri(prefix)}: {module_name}.safetensors does not match its manifest"
            )
        states[module_name] = load_safetensors(payload)
    config = checkpoint_config(store, name, resolved)
    log.info("checkpoint loaded: name=%s version=%s modules=%s", name, resolved, sorted(states))
    return states, config
