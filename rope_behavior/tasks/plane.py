"""Where trained toy heads sit in the positional-symbolic plane (docs/method.md §4-5).

:func:`plane_scores` scores every head with :func:`rope_behavior.scoring.scorer.score_heads` in
``"keys"`` mode on fresh task prompts at the query (last) position, with
``block_size=1`` and every block pair swapped (``n_swaps=None``): the 17-token prompts
have 16 movable keys and every canonical task reads ONE key (the answer position), so
single-token blocks (120 swaps) test exactly whether a head's attention follows the
position or the content of that key. ``s_pos`` / ``s_sym`` are averaged over the
identifiable prompts only (a near-uniform row scores (1, 1) whatever the head does);
``identifiable`` is true when at least half the prompts are; ``answer_attention`` is the
head's mean attention weight on the answer position (which head does the work).
Keys mode runs the model without hooks, so the scores describe the unrestricted model:
use it on models trained under ``all``.
"""

from typing import Any

import torch

from rope_behavior.model.context import resolve
from rope_behavior.scoring.head_classes import is_identifiable
from rope_behavior.scoring.scorer import score_heads
from rope_behavior.tasks.batch import Task
from rope_behavior.tasks.toy import ToyRotaryTransformer

__all__ = ["plane_scores"]


def plane_scores(
    model: ToyRotaryTransformer,
    task: Task,
    generator: torch.Generator,
    *,
    n_prompts: int = 256,
    fwd_hooks: Any = (),
) -> list[dict[str, Any]]:
    """Each head's (s_pos, s_sym) on ``task`` prompts (see the module docstring)."""
    context = resolve(model)
    batch = task.sample(n_prompts, generator).to(model.device)
    scores = score_heads(
        context, batch.tokens, mode="keys", block_size=1, n_swaps=None, query_positions="last"
    )
    ident = scores.identifiable.double()
    n_ok = ident.sum(0)

    def ident_mean(x: torch.Tensor) -> torch.Tensor:
        total = torch.where(scores.identifiable, x.double(), 0.0).sum(0)
        return torch.where(n_ok > 0, total / n_ok.clamp_min(1), float("nan"))

    s_pos, s_sym, frac = ident_mean(scores.s_pos), ident_mean(scores.s_sym), ident.mean(0)
    patterns: dict[int, torch.Tensor] = {}
    names = {context.spec.sites[layer].pattern: layer for layer in scores.layers}

    def grab(pattern: torch.Tensor, hook: Any) -> None:
        patterns[names[hook.name]] = pattern[:, :, batch.query_position].detach()

    with torch.inference_mode(), context.adapter.hooked([*fwd_hooks, *((n, grab) for n in names)]):
        context.adapter.forward(batch.tokens)
    rows = []
    for li, layer in enumerate(scores.layers):
        at_answer = (
            patterns[layer]
            .gather(2, batch.answer_position[:, None, None].expand(-1, scores.n_heads, 1))[..., 0]
            .mean(0)
        )
        for head in range(scores.n_heads):
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "s_pos": float(s_pos[li, head]),
                    "s_sym": float(s_sym[li, head]),
                    "identifiable_fraction": float(frac[li, head]),
                    "identifiable": bool(is_identifiable(frac[li, head])),
                    "answer_attention": float(at_answer[head]),
                }
            )
    return rows
