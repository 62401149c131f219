"""What a model name means, decided in one place for every door (:class:`ModelLoader
<rope_behavior.runtime.executors.ModelLoader>`, the command line's ``load_model``), so one
cause gets one message:

* an existing folder is a local folder (:func:`model_source` returns a :class:`Path`);
* a name that can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x/``), or is no
  valid hub name, and does not exist: "no such model folder: '<path>' (...)";
* anything else is a hub name, loaded from the local cache when it is there (without the
  network) or downloaded; offline, one line says so (:func:`boot_hub_model`).
"""

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rope_behavior.errors import RopeBehaviorError

__all__ = [
    "HUB_FORM",
    "OFFLINE_HINT",
    "boot_folder",
    "boot_hub_model",
    "hub_reachable",
    "model_source",
]

HUB_FORM = "a hub name has the form 'org/model', e.g. meta-llama/Llama-3.2-1B"
OFFLINE_HINT = (
    "offline, pass a local Hugging Face folder instead, or use the shipped language model "
    "(no MODEL on the command line; rope_behavior.load_shipped_lm() in Python)"
)


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else can only be a folder."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1


def model_source(name: object) -> Path | str:
    """What a model name means: an existing folder (returned as a :class:`Path`), else a
    hub name (returned as it is). A name that can only be a path and does not exist, or
    that is no valid hub name, is a :class:`RopeBehaviorError` ("no such model folder:
    ..."); so is an existing file."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise RopeBehaviorError(
            f"model={name!r} of type {type(name).__name__}; expected a local model folder or "
            f"a hub name (str; {HUB_FORM})"
        )
    if not name.strip():
        raise RopeBehaviorError(
            f"model name {name!r} is empty; expected a local model folder or a hub name "
            f"({HUB_FORM})"
        )
    path = Path(name).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as e:  # a name too long for a path
        raise RopeBehaviorError(
            f"no such model folder: {name[:100]!r}... ({e.strerror or e}; {HUB_FORM})"
        ) from None
    if is_dir:
        return path
    if exists:
        raise RopeBehaviorError(
            f"model folder {str(path)!r} is a file, not a folder: expected a local Hugging "
            "Face folder with config.json, the weights and tokenizer files"
        )
    if not _looks_like_path(name):
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(name)
            return name
        except HFValidationError:
            pass
    raise RopeBehaviorError(f"no such model folder: {str(path)!r} ({HUB_FORM})")


def boot_folder(path: Path, *args: Any, **kwargs: Any) -> Any:
    """``TransformerBridge.boot_transformers`` on a local folder, after checking that it
    is one and holds ``config.json``."""
    from transformer_lens.model_bridge import TransformerBridge

    if not (path / "config.json").is_file():
        raise RopeBehaviorError(
            f"model folder {str(path)!r} lacks config.json: expected a local Hugging Face "
            "folder with config.json, the weights and tokenizer files"
        )
    try:
        return TransformerBridge.boot_transformers(str(path), *args, **kwargs)
    except OSError as e:
        raise RopeBehaviorError(f"cannot load model folder {str(path)!r}: {_first_line(e)}") from e


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub's host resolves and accepts a connection (fast: no
    retries), and the reason when not."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True, ""
    except OSError as e:
        return False, f"{host}: {e.strerror or e}"


def boot_hub_model(name: str, *args: Any, **kwargs: Any) -> Any:
    """``TransformerBridge.boot_transformers(name, ...)`` for a hub name: from the local
    cache when it is there (without touching the network), else downloaded; offline, or
    refused by the hub, a one-line :class:`RopeBehaviorError`."""
    from huggingface_hub import try_to_load_from_cache
    from transformer_lens.model_bridge import TransformerBridge

    revision = kwargs.get("revision")
    cached = isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)
    if not cached:
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            ok, why = False, "HF_HUB_OFFLINE is set"
        else:
            ok, why = hub_reachable()
        if not ok:
            raise RopeBehaviorError(
                f"cannot reach the Hugging Face hub to download {name!r} ({why}), and no "
                f"folder of that name exists here; {OFFLINE_HINT}"
            )
    with _hub_offline(cached):
        try:
            return TransformerBridge.boot_transformers(name, *args, **kwargs)
        except OSError as e:  # gated / missing repos, missing files
            raise RopeBehaviorError(f"cannot load {name!r} from the hub: {_first_line(e)}") from e


@contextlib.contextmanager
def _hub_offline(on: bool) -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the block when ``on`` (a cached model loads without the
    network), restored afterwards."""
    old = os.environ.get("HF_HUB_OFFLINE")
    if on:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if on:
            if old is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(e).__name__
