"""What the command line loads: models (hub name, local folder, the shipped LM, random
weights) and prompts (built-in held-out text, a text file, JSONL), with errors a user can
act on (one line each; the CLI prints them without a traceback); which prompts can be
scored (the others are skipped, named by their line); the demo's copying prompts."""

import json
import os
from pathlib import Path
from typing import Any

import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.runtime.sources import OFFLINE_HINT, boot_hub_model, hub_reachable, model_source

__all__ = [
    "OFFLINE_HINT",
    "copy_patching_prompts",
    "hub_reachable",
    "load_model",
    "load_prompt_lines",
    "load_prompts",
    "scorable_tokens",
    "skipped_note",
]

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
    numbered = load_prompt_lines(path)
    return None if numbered is None else [text for _, text in numbered]


def load_prompt_lines(path: str | None) -> list[tuple[int, str]] | None:
    """:func:`load_prompts` with each prompt's line number in the file (1-based, blank
    lines counted, as an editor shows them), to name a prompt to the user."""
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
        numbered = [(i, _jsonl_prompt(p, i, line)) for i, line in numbered]
    if not numbered:
        raise RopeBehaviorError(
            f"prompts file {str(p)!r} holds no prompt (it is empty or only blank lines)"
        )
    return numbered


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


def scorable_tokens(
    model: Any, texts: list[str], context: int, max_prompts: int | None, block_size: int
) -> tuple[Any, Any, list[int], list[int], int]:
    """Token ids and mask of the first ``max_prompts`` texts that can be scored with
    ``block_size`` (all of them when ``None``), the indices of the texts kept and of those
    skipped as too short, and the tokens a prompt needs. Runs where the model is."""
    from rope_behavior.analysis.main_job import tokenize_prompts
    from rope_behavior.model.context import resolve
    from rope_behavior.scoring.scorable import MIN_BLOCKS, scorable_prompts

    want = len(texts) if max_prompts is None else max_prompts
    kept: list[int] = []
    skipped: list[int] = []
    while len(kept) < want and len(kept) + len(skipped) < len(texts):
        start = len(kept) + len(skipped)
        tokens, mask = tokenize_prompts(model, texts[start : start + want - len(kept)], context)
        ok = scorable_prompts(model, tokens, mask, block_size=block_size)
        for i, good in enumerate(ok.tolist()):
            (kept if good else skipped).append(start + i)
    bos = resolve(model).adapter.prepended_bos_id() is not None
    need = MIN_BLOCKS * block_size + 1 + int(bos)
    if not kept:
        return None, None, kept, skipped, need
    tokens, mask = tokenize_prompts(model, [texts[i] for i in kept], context)
    return tokens.cpu(), mask.cpu(), kept, skipped, need


def skipped_note(
    skipped: list[int], n_read: int, lines: list[int] | None, need: int, block_size: int
) -> str:
    """``skipped 2 of 40 prompts too short to score (lines 3, 17): ...``, naming the
    prompts by their line in the file (by their number without a file)."""
    where = [lines[i] if lines else i + 1 for i in skipped]
    shown = ", ".join(map(str, where[:10])) + (
        f" and {len(where) - 10} more" if len(where) > 10 else ""
    )
    what = ("line" if lines else "prompt") + ("s" if len(where) > 1 else "")
    return (
        f"skipped {len(skipped)} of {n_read} prompts too short to score ({what} {shown}): a "
        f"prompt needs at least {need} tokens with --block-size {block_size}"
    )


def copy_patching_prompts(
    model: Any, texts: list[str], n: int, seed: int, *, length: int = 16, repeat: int = 10
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Clean / corrupted prompts on which a language model copies, and the metric.

    Each prompt is BOS, a snippet of ``length`` tokens of one text, then the snippet's
    first ``repeat`` tokens again. The clean prompt's last token occurs once in the
    snippet, so the model predicts the token that followed it there (the answer). The
    corrupted prompt ends instead with another token that occurs once, whose follower is
    the wrong answer. Both runs hold the same tokens up to the last, so they differ only
    in what the last query looks for. The metric is the logit of the answer minus that of
    the wrong answer at the last position (named with the tokens). One prompt per text
    (its first snippet that allows this), ``n`` at most; ``seed`` draws the corrupted
    token."""
    from rope_behavior.model.context import resolve
    from rope_behavior.patching import metrics

    gen = torch.Generator().manual_seed(seed)
    bos = 1 if resolve(model).adapter.prepended_bos_id() is not None else 0
    q = repeat - 1  # where the repeat stops, in the snippet
    clean, corrupted, answer, wrong = [], [], [], []
    for text in texts:
        ids = model.to_tokens(text)[0].cpu()
        for start in range(bos, len(ids) - length + 1, length):
            seg = ids[start : start + length]
            once = [int((seg == t).sum()) == 1 for t in seg]
            others = [k for k in range(length - 1) if once[k] and once[k + 1] and abs(k - q) > 1]
            if not (once[q] and once[q + 1] and others):
                continue
            k = others[int(torch.randint(len(others), (), generator=gen))]
            prompt = torch.cat([ids[:bos], seg, seg[:repeat]])
            clean.append(prompt)
            corrupted.append(torch.cat([prompt[:-1], seg[k : k + 1]]))
            answer.append(int(seg[q + 1]))
            wrong.append(int(seg[k + 1]))
            break
        if len(clean) == n:
            break
    if not clean:
        raise RopeBehaviorError(
            f"no text holds a snippet of {length} tokens whose token {repeat} and another "
            "occur once: no prompt to patch"
        )
    metric = metrics.logit_diff(torch.tensor(answer), torch.tensor(wrong), tokenizer=model)
    return torch.stack(clean), torch.stack(corrupted), metric
