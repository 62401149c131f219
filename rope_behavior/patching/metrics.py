"""Metrics for patching sweeps: callables ``logits [batch, pos, vocab] -> scalar``.

Each helper returns a small frozen dataclass that holds what it needs (answer ids, the
clean logits, ...) and has a ``name`` a reader understands, shown in a sweep's result and
its plots: the answer tokens as text when the helper was given the tokenizer
(``logit_diff(position=-1, answer=' Paris', wrong=' Rome')``; for many prompts
``answer=64 tokens (' the', ' of', ...)``), else their ids (``answer=id 1234``),
and the shape of a tensor of tokens or logits. A sweep calls the metric once per condition
on that condition's batch slice ``[B, pos, vocab]`` (``B`` = the batch of the
clean/corrupted tokens) and needs one number back.

A metric that reads only the last ``k`` positions (a negative ``position``) says so with
``last_positions = k``: the sweep then asks the model for those logits only (Hugging Face
``logits_to_keep``, which skips most of the unembedding) and passes ``[B, k, vocab]``.
Any user metric may set the same attribute.

A name is not an identity (two metrics with other answers can share one): a resumable
sweep identifies its metric by :func:`rope_behavior.runtime.fingerprint.metric_identity`,
a hash of the metric's code and of every value it captures (tensors by content), so two
closures with one qualified name never count as one either.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError

__all__ = [
    "Accuracy",
    "KLToClean",
    "LogitDiff",
    "Loss",
    "accuracy",
    "as_scalar",
    "kl_to_clean",
    "logit_diff",
    "loss",
    "metric_name",
]


_SHOWN = 2
"""Tokens a name lists when a metric holds one per prompt (then ``...``)."""


def _texts(tokenizer: Any, ids: Tensor, what: str) -> tuple[str, ...] | None:
    """The first ids a name shows, each decoded alone by ``tokenizer`` (one with
    ``decode``, or a model holding one as ``.tokenizer``); ``None`` without a tokenizer."""
    if tokenizer is None:
        return None
    tok: Any = tokenizer
    if not callable(getattr(tok, "decode", None)):  # a model holding its tokenizer
        tok = getattr(tokenizer, "tokenizer", None)
    if not callable(getattr(tok, "decode", None)):
        raise RopeBehaviorError(
            f"{what}: tokenizer={_brief(tokenizer)} cannot decode token ids; expected "
            "a tokenizer with decode() (e.g. model.tokenizer), a model that has one, or None "
            "(the name then shows token ids)"
        )
    shown = ids[:_SHOWN].tolist()
    try:
        texts = tuple(tok.decode([i]) for i in shown)
    except Exception as e:  # whatever the tokenizer raises, said with the ids
        raise RopeBehaviorError(
            f"{what}: the tokenizer cannot decode the ids {shown} ({e}); check the ids belong "
            "to this tokenizer, or pass tokenizer=None (the name then shows ids)"
        ) from None
    if not all(isinstance(t, str) for t in texts):
        raise RopeBehaviorError(f"{what}: tokenizer.decode returned {texts!r}, not text")
    return texts


def _tokens_label(ids: Tensor, texts: Sequence[str] | None) -> str:
    """``' Paris'`` / ``id 1234`` for one token, ``64 tokens (' the', ' of', ...)`` /
    ``2 ids (5, 9)`` for one per prompt (``texts``: the first ids as text, or ``None``)."""
    n = ids.numel()
    items = [repr(t) for t in texts] if texts is not None else [str(i) for i in ids.tolist()]
    if n == 1:
        return items[0] if texts is not None else f"id {items[0]}"
    more = ", ..." if n > _SHOWN else ""
    kind = "tokens" if texts is not None else "ids"
    return f"{n} {kind} ({', '.join(items[:_SHOWN])}{more})"


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shape(t: Tensor) -> str:
    return " x ".join(map(str, t.shape))


def _ids(value: int | Tensor, what: str) -> Tensor:
    if isinstance(value, bool) or not isinstance(value, (int, Tensor)):
        raise RopeBehaviorError(
            f"{what} must be a token id or a [batch] tensor of ids; got {value!r}"
        )
    t = torch.as_tensor(value)
    if t.is_floating_point() or t.ndim > 1:
        raise RopeBehaviorError(
            f"{what} must be integer ids, a scalar or [batch]; got {t.dtype} {tuple(t.shape)}"
        )
    t = t.long().reshape(-1)
    if bool((t < 0).any()):
        raise RopeBehaviorError(f"{what} holds negative token ids {t[t < 0].tolist()}")
    return t


def _check_vocab(ids: Tensor, logits: Tensor, what: str) -> None:
    """Token ids must index the logits' last (vocabulary) axis."""
    vocab = logits.shape[-1]
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.numel():
        raise RopeBehaviorError(
            f"{what}: token ids {sorted(set(bad.tolist()))[:8]} are outside the vocabulary of "
            f"the logits (size {vocab}: valid ids are 0..{vocab - 1}); check the ids belong "
            "to this model's tokenizer"
        )


class _ReadsOnePosition:
    """Metrics that read the logits at one ``position``: a negative position counts from the
    end, so the sweep needs only the last ``-position`` positions' logits."""

    position: int | None

    @property
    def last_positions(self) -> int | None:
        return -self.position if self.position is not None and self.position < 0 else None


def _check_logits(logits: Tensor, batch: int | None, position: int | None, what: str) -> None:
    if logits.ndim != 3:
        raise RopeBehaviorError(
            f"{what}: expected logits [batch, pos, vocab]; got shape {tuple(logits.shape)}"
        )
    if batch is not None and batch not in (1, logits.shape[0]):
        raise RopeBehaviorError(
            f"{what}: {batch} answers for a batch of {logits.shape[0]} (expected one per row, or one for all)"
        )
    if position is not None and not -logits.shape[1] <= position < logits.shape[1]:
        raise RopeBehaviorError(
            f"{what}: position {position} outside the {logits.shape[1]} positions"
        )


def _pick(logits: Tensor, position: int, ids: Tensor) -> Tensor:
    row = logits[:, position].to(torch.float64)
    return row.gather(-1, ids.to(row.device).expand(row.shape[0])[:, None])[:, 0]


@dataclass(frozen=True, eq=False)
class LogitDiff(_ReadsOnePosition):
    """Mean over the batch of ``logit[answer] - logit[wrong]`` at ``position``.
    ``answer_text`` / ``wrong_text``: the first tokens as text, for the name (``None``:
    the name shows ids)."""

    answer: Int[Tensor, " n_answer"] = field(repr=False)
    wrong: Int[Tensor, " n_wrong"] = field(repr=False)
    position: int = -1
    answer_text: tuple[str, ...] | None = field(default=None, repr=False)
    wrong_text: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        answer = _tokens_label(self.answer, self.answer_text)
        wrong = _tokens_label(self.wrong, self.wrong_text)
        return f"logit_diff(position={self.position}, answer={answer}, wrong={wrong})"

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        _check_logits(logits, self.answer.shape[0], self.position, "logit_diff")
        _check_logits(logits, self.wrong.shape[0], self.position, "logit_diff (wrong)")
        _check_vocab(self.answer, logits, "logit_diff answer")
        _check_vocab(self.wrong, logits, "logit_diff wrong")
        return (
            _pick(logits, self.position, self.answer) - _pick(logits, self.position, self.wrong)
        ).mean()


def logit_diff(
    answer: int | Tensor, wrong: int | Tensor, *, position: int = -1, tokenizer: Any = None
) -> LogitDiff:
    """Logit difference between the ``answer`` and ``wrong`` token ids (one each, or one
    per batch row) at ``position`` (default: last), averaged over the batch. With
    ``tokenizer`` (or a model that has one) the name shows the tokens as text."""
    a, w = _ids(answer, "answer"), _ids(wrong, "wrong")
    a_text = _texts(tokenizer, a, "logit_diff answer")
    return LogitDiff(a, w, int(position), a_text, _texts(tokenizer, w, "logit_diff wrong"))


@dataclass(frozen=True, eq=False)
class Loss:
    """Mean next-token cross-entropy of ``tokens`` (predictions at positions ``0..pos-2``)."""

    tokens: Int[Tensor, "batch pos"] = field(repr=False)

    @property
    def name(self) -> str:
        return f"loss(tokens={_shape(self.tokens)})"

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        _check_logits(logits, self.tokens.shape[0], None, "loss")
        if logits.shape[:2] != self.tokens.shape:
            raise RopeBehaviorError(
                f"loss: logits {tuple(logits.shape)} do not match tokens {tuple(self.tokens.shape)}"
            )
        _check_vocab(self.tokens[:, 1:], logits, "loss tokens")
        pred = logits[:, :-1].to(torch.float64).reshape(-1, logits.shape[-1])
        return torch.nn.functional.cross_entropy(
            pred, self.tokens[:, 1:].reshape(-1).to(pred.device)
        )


def loss(tokens: Int[Tensor, "batch pos"]) -> Loss:
    """Next-token loss on ``tokens`` (typically the clean tokens), averaged over batch and positions."""
    if (
        not isinstance(tokens, Tensor)
        or tokens.ndim != 2
        or tokens.is_floating_point()
        or tokens.shape[1] < 2
    ):
        raise RopeBehaviorError(
            "loss(tokens): tokens must be integer ids [batch, pos] with pos >= 2"
        )
    if bool((tokens < 0).any()):
        raise RopeBehaviorError(
            f"loss(tokens): tokens hold negative ids {tokens[tokens < 0].tolist()[:8]}"
        )
    return Loss(tokens.long())


@dataclass(frozen=True, eq=False)
class Accuracy(_ReadsOnePosition):
    """Fraction of batch rows whose top prediction at ``position`` is ``answer``.
    ``answer_text``: the first answers as text, for the name (``None``: the name shows ids)."""

    answer: Int[Tensor, " n_answer"] = field(repr=False)
    position: int = -1
    answer_text: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        answer = _tokens_label(self.answer, self.answer_text)
        return f"accuracy(position={self.position}, answer={answer})"

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        _check_logits(logits, self.answer.shape[0], self.position, "accuracy")
        _check_vocab(self.answer, logits, "accuracy answer")
        top = logits[:, self.position].argmax(-1)
        return (top == self.answer.to(top.device)).to(torch.float64).mean()


def accuracy(answer: int | Tensor, *, position: int = -1, tokenizer: Any = None) -> Accuracy:
    """Top-1 accuracy against ``answer`` (one id, or one per row) at ``position``. With
    ``tokenizer`` (or a model that has one) the name shows the tokens as text."""
    a = _ids(answer, "answer")
    return Accuracy(a, int(position), _texts(tokenizer, a, "accuracy answer"))


@dataclass(frozen=True, eq=False)
class KLToClean(_ReadsOnePosition):
    """Mean ``KL(clean || run)`` of next-token distributions at ``position`` (all
    positions when ``None``), averaged over the batch (and positions)."""

    clean_logits: Float[Tensor, "batch pos vocab"] = field(repr=False)
    position: int | None = -1

    @property
    def name(self) -> str:
        return f"kl_to_clean(position={self.position}, clean logits {_shape(self.clean_logits)})"

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        _check_logits(logits, None, self.position, "kl_to_clean")
        clean = self.clean_logits
        if logits.shape[1] < clean.shape[1]:  # the sweep kept only the last positions
            clean = clean[:, clean.shape[1] - logits.shape[1] :]
        if logits.shape != clean.shape:
            raise RopeBehaviorError(
                f"kl_to_clean: logits {tuple(logits.shape)} do not match the clean logits "
                f"{tuple(self.clean_logits.shape)}"
            )
        clean, run = clean.to(logits.device, torch.float64), logits.to(torch.float64)
        if self.position is not None:
            clean, run = clean[:, self.position], run[:, self.position]
        p_log, q_log = clean.log_softmax(-1), run.log_softmax(-1)
        return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def kl_to_clean(
    clean_logits: Float[Tensor, "batch pos vocab"], *, position: int | None = -1
) -> KLToClean:
    """KL divergence from the clean run's predictions (0 = clean behaviour restored)."""
    if not isinstance(clean_logits, Tensor) or clean_logits.ndim != 3:
        raise RopeBehaviorError("kl_to_clean: clean_logits must be a [batch, pos, vocab] tensor")
    return KLToClean(clean_logits.detach(), position)


def metric_name(metric: Any) -> str:
    """A readable name for a metric: its ``name`` attribute or its qualified name. Not an
    identity (two closures share a qualified name): resumable sweeps use
    :func:`rope_behavior.runtime.fingerprint.metric_identity`."""
    name = getattr(metric, "name", None)
    if isinstance(name, str):
        return name
    module = getattr(metric, "__module__", "")
    qual = getattr(metric, "__qualname__", type(metric).__qualname__)
    return f"{module}.{qual}"


def as_scalar(value: Any, where: str) -> float:
    """The metric's value as a finite float, or a clear error naming ``where`` it came from."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise RopeBehaviorError(
                f"the metric returned a tensor of shape {tuple(value.shape)} for {where}; a "
                "sweep metric must reduce one condition's logits [batch, pos, vocab] to ONE "
                "number (e.g. .mean() over the batch)"
            )
        out = float(value.detach().reshape(()).item())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    else:
        raise RopeBehaviorError(
            f"the metric returned {type(value).__name__} for {where}; expected a float or a "
            "one-element tensor"
        )
    if not math.isfinite(out):
        raise RopeBehaviorError(
            f"the metric returned {out} for {where}; a sweep needs finite values. Check the "
            "model for NaN/inf weights or activations (e.g. all(p.isfinite().all() for p in "
            "model.parameters())) and the metric for a division by zero or log(0)"
        )
    return out
