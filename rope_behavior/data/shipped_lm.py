"""The small naturally trained rotary language model shipped with the package.

``rope_behavior/lm/`` is an ordinary Hugging Face model folder (``config.json``,
``model.safetensors``, tokenizer files) of a ``LlamaForCausalLM`` trained from scratch on
the Python standard library's source by ``scripts/train_lm.py``; ``rope_behavior_lm.json``
beside them records how it was trained and what it measured (held-out bits per byte,
previous-token and induction scores, positional / symbolic scores, the behaviour-frequency
correspondence). It loads the way hub models do::

    from transformer_lens.model_bridge import TransformerBridge
    model = TransformerBridge.boot_transformers(str(shipped_lm_path()))

or, with the checks below, ``load_shipped_lm()``. Nothing is downloaded: the folder is
local and every loader is given its path.
"""

import json
from importlib import resources
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import torch

from rope_behavior.errors import (
    NotRotaryModelError,
    RopeBehaviorError,
    UnsupportedArchitectureError,
    validates_inputs,
)

__all__ = [
    "LM_INFO_FILE",
    "load_lm_folder",
    "load_shipped_lm",
    "shipped_lm_info",
    "shipped_lm_path",
]

LM_INFO_FILE = "rope_behavior_lm.json"
"""The JSON file, in the shipped folder, of how the model was trained and what it measured."""
_WEIGHTS = "model.safetensors"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_REGENERATE = "regenerate it with `python scripts/train_lm.py`"


def shipped_lm_path() -> Path:
    """The folder of the shipped model, ``rope_behavior/lm`` (inside the installed package)."""
    return Path(str(resources.files("rope_behavior") / "lm"))


def shipped_lm_info() -> dict[str, Any]:
    """The shipped model's ``rope_behavior_lm.json``: ``training`` (configuration, corpus,
    steps, wall time) and ``measured`` (what ``scripts/train_lm.py --measure`` reports)."""
    path = shipped_lm_path() / LM_INFO_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise RopeBehaviorError(
            f"cannot read the shipped model's {str(path)!r} ({err}); expected the JSON "
            f"written by scripts/train_lm.py: {_REGENERATE}"
        ) from None


@validates_inputs
def load_shipped_lm(
    device: str | torch.device | None = None, dtype: torch.dtype | str | None = None
) -> Any:
    """The shipped model as a ``TransformerBridge`` (eval mode, eager attention): see
    :func:`load_lm_folder` for ``device`` and ``dtype``."""
    return load_lm_folder(shipped_lm_path(), device=device, dtype=dtype)


@validates_inputs
def load_lm_folder(
    path: str | PathLike[str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> Any:
    """Load a local Hugging Face rotary causal-LM folder with
    ``TransformerBridge.boot_transformers`` (eager attention, eval mode), after checking it.

    Args:
        path: a folder holding ``config.json``, ``model.safetensors`` and the tokenizer
            (``tokenizer.json`` or ``tokenizer_config.json``).
        device: where to put the model; ``None`` means the CPU (no device is guessed).
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.float16`` (or their names);
            ``None`` means the dtype the folder was saved in (float32 when it records none).

    Raises:
        RopeBehaviorError: naming ``path``, when the folder is missing or incomplete, its
            config or weights cannot be read, the dtype is not one of the options, or the
            model is not a rotary one rope_behavior can decompose
            (:class:`NotRotaryModelError`, :class:`UnsupportedArchitectureError`).
    """
    folder = _check_folder(path)
    config = _read_config(folder)
    torch_dtype = _resolve_dtype(dtype, config, folder)
    _check_weights(folder)
    bridge = _boot(folder, "cpu" if device is None else device, torch_dtype)
    bridge.eval()
    _check_rotary(bridge, folder)
    return bridge


def _check_folder(path: object) -> Path:
    if not isinstance(path, str | PathLike):
        raise RopeBehaviorError(
            f"path={path!r}; expected a str or os.PathLike naming a local model folder"
        )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise RopeBehaviorError(
            f"model folder {str(folder)!r} {what}: expected a local Hugging Face folder with "
            f"config.json, {_WEIGHTS} and tokenizer files (for the shipped model: {_REGENERATE})"
        )
    missing = [name for name in ("config.json", _WEIGHTS) if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        missing.append(" or ".join(_TOKENIZER_FILES))
    if missing:
        raise RopeBehaviorError(
            f"model folder {str(folder)!r} lacks {', '.join(missing)}: expected a Hugging Face "
            f"folder with config.json, {_WEIGHTS} and tokenizer files"
        )
    return folder.resolve()


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RopeBehaviorError(
            f"cannot read {str(path)!r} ({err}); expected a Hugging Face config.json"
        ) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise RopeBehaviorError(
            f"{str(path)!r} is not a Hugging Face model config: expected a JSON object with "
            "a 'model_type' key"
        )
    return config


def _resolve_dtype(dtype: object, config: dict[str, Any], folder: Path) -> torch.dtype:
    options = ", ".join(f"torch.{name}" for name in _DTYPES) + " or their names"
    if dtype is None:
        saved = config.get("dtype", config.get("torch_dtype")) or "float32"
        if saved not in _DTYPES:
            raise RopeBehaviorError(
                f"model folder {str(folder)!r} records dtype {saved!r}; rope_behavior loads "
                f"floating-point weights: pass dtype= one of {options}"
            )
        return _DTYPES[saved]
    for name, value in _DTYPES.items():
        if dtype in (value, name):
            return value
    raise RopeBehaviorError(
        f"dtype={dtype!r} cannot be used for model folder {str(folder)!r}: expected one of "
        f"{options} (the weights are floating point)"
    )


def _check_weights(folder: Path) -> None:
    """Read the safetensors header and every tensor: a truncated or corrupted file fails
    here, with its path, rather than deep inside ``from_pretrained``."""
    from safetensors import SafetensorError, safe_open

    path = folder / _WEIGHTS
    try:
        with safe_open(fspath(path), framework="pt") as f:
            names = list(f.keys())
            for name in names:
                f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise RopeBehaviorError(
            f"cannot read the weights {str(path)!r} ({err}): the file is corrupted or "
            f"truncated; expected a safetensors file written by save_pretrained"
        ) from None
    if not names:
        raise RopeBehaviorError(f"the weights {str(path)!r} hold no tensors")


def _boot(folder: Path, device: str | torch.device, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    try:
        return TransformerBridge.boot_transformers(fspath(folder), device=device, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        raise RopeBehaviorError(
            f"TransformerBridge.boot_transformers could not load model folder "
            f"{str(folder)!r}: {type(err).__name__}: {err}"
        ) from None


def _check_rotary(bridge: Any, folder: Path) -> None:
    from rope_behavior.model.spec import RopeSpec

    try:
        RopeSpec.from_model(bridge)
    except (NotRotaryModelError, UnsupportedArchitectureError) as err:
        raise type(err)(f"model folder {str(folder)!r}: {err}") from None
