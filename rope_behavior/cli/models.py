"""What the command line loads: models (hub name, local folder, the shipped LM, random
weights) and prompts (built-in held-out text, a text file, JSONL), with errors a user can
act on (one line each; the CLI prints them without a traceback)."""

import json
import os
from pathlib import Path
from typing import Any

import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.runtime.sources import OFFLINE_HINT, boot_hub_model, hub_reachable, model_source

__all__ = ["OFFLINE_HINT", "hub_reachable", "load_model", "load_prompts"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _DTYPES:
        raise RopeBehaviorError(f"--dtype {name!r}; options: {', '.join(_DTYPES)}")
    return _DTYPES[name]


def load_model(name: str | None, *, device: str = "cpu", dtype: str | None = None) -> Any:
    """A TransformerBridge in eval mode: the shipped LM (``name=None``), a local folder,
    or a hub name (from the local cache when it is there; otherwise downloaded). What the
    name means is decided by :func:`rope_behavior.runtime.sources.model_source`, as for a
    :class:`~rope_behavior.runtime.executors.ModelLoader`: one cause, one message."""
    import transformers

    from rope_behavior.data.shipped_lm import load_lm_folder, load_shipped_lm

    transformers.utils.logging.disable_progress_bar()  # one clean line per step in a terminal
    dt = _dtype(dtype)
    if name is None:
        return load_shipped_lm(device=device, dtype=dt)
    source = model_source(name)
    if isinstance(source, Path):
        return load_lm_folder(source, device=device, dtype=dt)
    kwargs: dict[str, Any] = {"device": device}
    if dt is not None:
        kwargs["dtype"] = dt
    return boot_hub_model(source, **kwargs).eval()


def load_prompts(path: str | None) -> list[str] | None:
    """Prompts from a text file (one per non-blank line; lines end at ``\\n``) or a JSONL
    file (``.jsonl``: each line a string or an object with ``"text"`` or ``"prompt"``), read
    as UTF-8 (a byte-order mark is dropped); ``None``: the built-in text. Errors name the
    file (the same reader serves ``--prompts``, ``--clean`` and ``--corrupted``)."""
    if path is None:
        return None
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise RopeBehaviorError(f"prompts file {path!r}: expected the path of a text or JSONL file")
    p = Path(path).expanduser()
    try:
        is_dir, is_file = p.is_dir(), p.is_file()
    except OSError as e:  # a name too long (one with a NUL byte is "no such file")
        raise RopeBehaviorError(
            f"prompts file {str(p)[:200]!r}: not a usable path ({e.strerror or e})"
        ) from None
    if not is_file:
        what = (
            "is a folder, not a file"
            if is_dir
            else "is not a regular file"
            if os.path.lexists(p)
            else "no such file"
        )
        raise RopeBehaviorError(f"prompts file {str(p)!r}: {what}")
    try:
        raw = p.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise RopeBehaviorError(
            f"prompts file {str(p)!r}: cannot read it ({e.strerror or e})"
        ) from None
    except UnicodeDecodeError as e:
        raise RopeBehaviorError(
            f"prompts file {str(p)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at "
            f"offset {e.start}); save it as UTF-8"
        ) from None
    numbered = [(i, line.rstrip("\r")) for i, line in enumerate(raw.split("\n"), 1)]
    numbered = [(i, line) for i, line in numbered if line.strip()]
    if p.suffix.lower() == ".jsonl":
        lines = [_jsonl_prompt(p, i, line) for i, line in numbered]
    else:
        lines = [line for _, line in numbered]
    if not lines:
        raise RopeBehaviorError(
            f"prompts file {str(p)!r} holds no prompt (it is empty or only blank lines)"
        )
    return lines


def _jsonl_prompt(p: Path, i: int, line: str) -> str:
    try:
        obj = json.loads(line)
    except ValueError:
        raise RopeBehaviorError(f"prompts file {str(p)!r} line {i} is not JSON") from None
    text = (
        obj
        if isinstance(obj, str)
        else obj.get("text", obj.get("prompt"))
        if isinstance(obj, dict)
        else None
    )
    if not isinstance(text, str):
        raise RopeBehaviorError(
            f"prompts file {str(p)!r} line {i}: expected a string or an object with a string "
            f"'text' or 'prompt'; got {_brief(obj)}"
        )
    if not text.strip():
        raise RopeBehaviorError(f"prompts file {str(p)!r} line {i}: the prompt is empty")
    return text


def _brief(obj: Any) -> str:
    text = json.dumps(obj)
    return text if len(text) <= 60 else text[:57] + "..."
