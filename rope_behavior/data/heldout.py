"""The offline corpus every machine has: the Python standard library's own source.

The shipped language model (``rope_behavior/lm``) was trained on it by
``scripts/train_lm.py``, split by file: a file is held out when
``int(sha256(relative path), 16) % 100 < VAL_PERCENT``. Test suites and ``site-packages`` are left out. The held-out files
are the built-in prompts of ``rope-behavior analyze`` (they never reached training).
The standard library differs between Python versions, so the exact text does too.
"""

import hashlib
import sysconfig
from pathlib import Path

from rope_behavior.errors import RopeBehaviorError

__all__ = ["EXCLUDED_DIRS", "VAL_PERCENT", "corpus_split", "heldout_texts", "stdlib_root"]

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages"})
VAL_PERCENT = 5


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_split(root: Path | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, val)`` lists of ``(relative path, text)``, sorted by path; split by file."""
    root = stdlib_root() if root is None else root
    train: list[tuple[str, str]] = []
    val: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if EXCLUDED_DIRS & set(rel.split("/")[:-1]) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        digest = int(hashlib.sha256(rel.encode()).hexdigest(), 16)
        (val if digest % 100 < VAL_PERCENT else train).append((rel, text))
    return train, val


def heldout_texts(n: int = 256, chars: int = 2000) -> list[str]:
    """``n`` passages of about ``chars`` characters (cut at line ends), evenly spaced over
    the held-out files' text: long enough for 128+ tokens each."""
    _, val = corpus_split()
    stream = "\n".join(text for _, text in val)
    if len(stream) < chars:
        raise RopeBehaviorError(
            f"the held-out standard-library text under {stdlib_root()} holds {len(stream)} "
            "characters; pass prompts explicitly"
        )
    n_chunks = len(stream) // chars
    picks = sorted({round(i * (n_chunks - 1) / max(n - 1, 1)) for i in range(min(n, n_chunks))})
    out = []
    for k in picks:
        start = stream.rfind("\n", 0, k * chars) + 1
        end = stream.find("\n", start + chars)
        out.append(stream[start : end if end > 0 else None])
    return out
