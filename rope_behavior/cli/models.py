"""What the command line loads: models (hub name, local folder, the shipped LM, random
weights) and prompts (built-in held-out text, a text file, JSONL), with errors a user can
act on (one line each; the CLI prints them without a traceback)."""

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from rope_behavior.errors import RopeBehaviorError

__all__ = ["hub_reachable", "load_model", "load_prompts"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLINE_HINT = (
    "offline, pass a local Hugging Face folder instead, or give no MODEL to analyse the "
    "shipped language model"
)


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _DTYPES:
        raise RopeBehaviorError(f"--dtype {name!r}; options: {', '.join(_DTYPES)}")
    return _DTYPES[name]


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub's host resolves and accepts a connection (fast: no
    retries), and the reason when not."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True, ""
    except OSError as e:
        return False, f"{host}: {e.strerror or e}"


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else can only be a folder."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1


def load_model(name: str | None, *, device: str = "cpu", dtype: str | None = None) -> Any:
    """A TransformerBridge in eval mode: the shipped LM (``name=None``), a local folder,
    or a hub name (from the local cache when it is there; otherwise downloaded)."""
    import transformers

    from rope_behavior.data.shipped_lm import load_lm_folder, load_shipped_lm

    transformers.utils.logging.disable_progress_bar()  # one clean line per step in a terminal
    dt = _dtype(dtype)
    if name is None:
        return load_shipped_lm(device=device, dtype=dt)
    path = Path(name).expanduser()
    if path.exists():
        return load_lm_folder(path, device=device, dtype=dt)
    if _looks_like_path(name):
        raise RopeBehaviorError(
            f"no such model folder: {str(path)!r} (a hub name has the form 'org/model', "
            "e.g. meta-llama/Llama-3.2-1B)"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if not cached:
        ok, why = hub_reachable()
        if not ok:
            raise RopeBehaviorError(
                f"cannot reach the Hugging Face hub to download {name!r} ({why}), and no "
                f"folder of that name exists here; {OFFLINE_HINT}"
            )
    from transformer_lens.model_bridge import TransformerBridge

    kwargs: dict[str, Any] = {"device": device}
    if dt is not None:
        kwargs["dtype"] = dt
    old = os.environ.get("HF_HUB_OFFLINE")
    if cached:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = TransformerBridge.boot_transformers(name, **kwargs)
    except OSError as e:  # gated / missing repos, missing files
        raise RopeBehaviorError(
            f"cannot load {name!r} from the hub: {str(e).splitlines()[0]}"
        ) from None
    finally:
        if cached:
            if old is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old
    return model.eval()


def load_prompts(path: str | None) -> list[str] | None:
    """Prompts from a text file (one per non-empty line) or a JSONL file (each line an
    object with ``"text"`` or ``"prompt"``, or a string); ``None``: the built-in text."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise RopeBehaviorError(f"--prompts {str(p)!r}: no such file")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RopeBehaviorError(
            f"--prompts {str(p)!r}: cannot read it as UTF-8 text ({e})"
        ) from None
    lines = [line for line in raw.splitlines() if line.strip()]
    if p.suffix == ".jsonl":
        out = []
        for i, line in enumerate(lines, 1):
            try:
                obj = json.loads(line)
            except ValueError:
                raise RopeBehaviorError(f"--prompts {str(p)!r} line {i} is not JSON") from None
            text = (
                obj
                if isinstance(obj, str)
                else obj.get("text", obj.get("prompt"))
                if isinstance(obj, dict)
                else None
            )
            if not isinstance(text, str):
                raise RopeBehaviorError(
                    f"--prompts {str(p)!r} line {i}: expected a string or an object with 'text' or 'prompt'"
                )
            out.append(text)
        lines = out
    if not lines:
        raise RopeBehaviorError(f"--prompts {str(p)!r} holds no prompt (it is empty)")
    return lines
