"""The model's next-token loss and accuracy on held-out text, as sums that batches add up.

Every prediction of a real token from a real token counts (``attention_mask`` 0 marks
padding): the logits at position ``i`` predict token ``i + 1``. The loss is the
cross-entropy in nats (each term in the logits' precision, at least float32, summed in
float64), the accuracy the top-1 hit rate.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError

__all__ = ["NextToken", "next_token_sums"]


@dataclass(frozen=True)
class NextToken:
    """Summed next-token cross-entropy (nats), hits and predictions of some prompts."""

    loss_sum: float
    n_correct: int
    n_predictions: int

    def __add__(self, other: "NextToken") -> "NextToken":
        return NextToken(
            self.loss_sum + other.loss_sum,
            self.n_correct + other.n_correct,
            self.n_predictions + other.n_predictions,
        )

    def _counted(self) -> int:
        if self.n_predictions == 0:
            raise RopeBehaviorError(
                "no prediction of a real token from a real token in these prompts (each "
                "needs two real tokens in a row); expected longer prompts or a mask with them"
            )
        return self.n_predictions

    @property
    def loss(self) -> float:
        """Mean cross-entropy per prediction (nats)."""
        return self.loss_sum / self._counted()

    @property
    def accuracy(self) -> float:
        """Fraction of predictions whose top logit is the next token."""
        return self.n_correct / self._counted()


def next_token_sums(
    logits: Float[Tensor, "batch pos vocab"],
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | None,
) -> NextToken:
    """The sums of one batch: its logits (the model's output on ``tokens``)."""
    if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(tokens.shape):
        raise RopeBehaviorError(
            f"logits of shape {tuple(logits.shape)} for tokens {tuple(tokens.shape)}; "
            "expected the model's output [batch, pos, vocab] on those tokens"
        )
    real = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
    valid = (real[:, 1:] & real[:, :-1]).to(logits.device)
    with torch.no_grad():
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        target = tokens[:, 1:].to(logits.device)
        picked = torch.log_softmax(logits, -1)[:, :-1].gather(-1, target[..., None])[..., 0]
        loss = -float(picked.double()[valid].sum())
        correct = int(((logits[:, :-1].argmax(-1) == target) & valid).sum())
    return NextToken(loss, correct, int(valid.sum()))
