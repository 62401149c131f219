"""Entity–attribute binding prompts: a seeded, offline generator with the answers.

A prompt binds ``n_pairs`` entities to attributes, one plain sentence each, then queries
one entity::

    The box holds the apple. The bag holds the key. The jar holds the coin. The bag holds the

The answer is the attribute bound to the queried entity (``" key"``, as it follows
``"the"``: with its leading space); the distractor is another attribute bound in the same
prompt (``" apple"``), so ``logit[answer] - logit[distractor]`` measures whether the model
retrieves the right binding. The words come from built-in lists of common English nouns
(:data:`ENTITIES`, :data:`ATTRIBUTES`; no download) or from the caller.

With a tokenizer (a Hugging Face tokenizer, or a model holding one as ``.tokenizer``) every
entity and attribute is a single token as it follows ``"The"`` / ``"the"``: the word lists
are filtered to such words before anything is drawn (a word that is several tokens is never
drawn, so nothing is re-drawn), the ids of the answers and distractors are returned, and
every prompt of one call then has the same number of tokens. A drawn prompt whose full
tokenization disagrees with its words' tokens (a tokenizer that merges across words) is
refused with an error naming it. For a given seed, word lists and tokenizer the prompts
are the same on every machine.

:meth:`BindingPrompts.corrupted` makes the corrupted prompts of a patching pair (the same
tokens but for the queried entity, or with the two attributes exchanged), on which the
clean answer and distractor swap roles;
:func:`~rope_behavior.data.binding_patching.binding_patching_inputs` tokenizes both for a
model and adds the ``logit_diff`` metric that :func:`~rope_behavior.frequency_patching_sweep`
takes.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, as_count, as_seed, validates_inputs

__all__ = [
    "ATTRIBUTES",
    "CORRUPTIONS",
    "ENTITIES",
    "BindingPrompts",
    "Corruption",
    "binding_prompts",
    "check_corruption",
]

ENTITIES: tuple[str, ...] = (
    "box", "bag", "jar", "cup", "bowl", "pot", "pan", "tray", "case", "basket", "drawer",
    "crate", "chest", "bin", "can", "sack", "bucket", "tin", "vase", "shelf", "pouch",
    "purse", "tank", "trunk", "wallet", "pocket", "envelope", "folder", "cabinet", "closet",
    "barrel", "bottle", "locker", "file", "list", "map", "node", "root", "block", "frame",
    "stack", "buffer", "group", "user", "server", "host", "parent", "child", "man", "port",
    "entry", "room", "house", "car", "boat", "desk", "table", "page", "window", "garden",
)  # fmt: skip
"""Built-in entities (the holders): common English nouns."""

ATTRIBUTES: tuple[str, ...] = (
    "apple", "key", "coin", "ball", "ring", "pen", "book", "card", "stone", "shell", "bell",
    "egg", "leaf", "toy", "hat", "shoe", "sock", "clock", "lamp", "note", "letter", "phone",
    "watch", "brush", "spoon", "fork", "knife", "plate", "candle", "button", "pencil",
    "orange", "lemon", "bread", "cake", "flower", "seed", "shirt", "glove", "rope", "chain",
    "ticket", "stamp", "photo", "tag", "name", "value", "item", "data", "line", "text",
    "number", "string", "code", "path", "message", "token", "sign", "date", "time",
    "result", "error", "order", "request", "response", "source", "target", "input",
    "output", "header", "event", "element", "object", "test", "match", "part",
)  # fmt: skip
"""Built-in attributes (what is held): common English nouns, none of them an entity."""

Corruption = Literal["query", "swap"]
"""How a corrupted prompt differs from its clean one: ``"query"`` queries the distractor's
entity (the context is unchanged); ``"swap"`` exchanges the queried entity's and the
distractor's attributes in the context (the query is unchanged)."""

CORRUPTIONS: tuple[Corruption, ...] = ("query", "swap")

_QUERY = "The {entity} holds the"
_MIN_PAIRS = 2


def _sentence(entity: str, attribute: str) -> str:
    return f"{_QUERY.format(entity=entity)} {attribute}."


@validates_inputs
@dataclass(frozen=True, eq=False)
class BindingPrompts:
    """Binding prompts, one entry per prompt in every field.

    ``entities[i]`` / ``attributes[i]``: prompt ``i``'s pairs in the order they are stated
    (``attributes[i][j]`` is bound to ``entities[i][j]``); ``queried[i]``: the pair whose
    entity the prompt queries; ``distractor_pair[i]``: the other pair whose attribute is the
    distractor. ``answers`` / ``distractors``: those attributes as they follow the prompt
    (with the leading space), so ``texts[i] + answers[i]`` completes it. ``answer_ids`` /
    ``distractor_ids``: their token ids when a tokenizer was given, else ``None``.
    """

    texts: tuple[str, ...]
    answers: tuple[str, ...]
    distractors: tuple[str, ...]
    entities: tuple[tuple[str, ...], ...]
    attributes: tuple[tuple[str, ...], ...]
    queried: tuple[int, ...]
    distractor_pair: tuple[int, ...]
    answer_ids: Int[Tensor, " prompt"] | None = field(default=None, repr=False)
    distractor_ids: Int[Tensor, " prompt"] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.texts)
        sizes = {k: len(getattr(self, k)) for k in _PER_PROMPT}
        sizes |= {k: len(v) for k in _IDS if (v := getattr(self, k)) is not None}
        if any(size != n for size in sizes.values()):
            raise RopeBehaviorError(f"BindingPrompts: fields of unequal lengths {sizes}")
        if (self.answer_ids is None) != (self.distractor_ids is None):
            raise RopeBehaviorError("BindingPrompts: answer_ids and distractor_ids go together")

    def __len__(self) -> int:
        return len(self.texts)

    @validates_inputs
    def corrupted(self, corruption: Corruption = "query") -> "BindingPrompts":
        """The corrupted prompts of a patching pair (see :data:`Corruption`), as prompts of
        their own: in each, the clean distractor is the answer and the clean answer the
        distractor, so a clean ``logit_diff(answers, distractors)`` changes sign when the
        model binds. Token for token the same length as the clean prompts (with a tokenizer,
        every word is one token)."""
        check_corruption(corruption)
        texts, attributes, queried, other = [], [], [], []
        for ents, attrs, q, d in zip(
            self.entities, self.attributes, self.queried, self.distractor_pair, strict=True
        ):
            if corruption == "swap":  # pair q now holds the clean distractor, d the answer
                swapped = list(attrs)
                swapped[q], swapped[d] = attrs[d], attrs[q]
                attrs = tuple(swapped)
            else:  # query pair d, whose attribute is the clean distractor
                q, d = d, q
            texts.append(_render(ents, attrs, q))
            attributes.append(attrs)
            queried.append(q)
            other.append(d)
        return replace(
            self,
            texts=tuple(texts),
            answers=self.distractors,
            distractors=self.answers,
            attributes=tuple(attributes),
            queried=tuple(queried),
            distractor_pair=tuple(other),
            answer_ids=self.distractor_ids,
            distractor_ids=self.answer_ids,
        )


_PER_PROMPT = ("answers", "distractors", "entities", "attributes", "queried", "distractor_pair")
_IDS = ("answer_ids", "distractor_ids")


def check_corruption(corruption: object) -> None:
    """Refuse a ``corruption`` that is not one of :data:`CORRUPTIONS`."""
    if corruption not in CORRUPTIONS:
        raise RopeBehaviorError(
            f"corruption={corruption!r} is not one of {list(CORRUPTIONS)} (query the "
            "distractor's entity, or swap the two attributes in the context)"
        )


def _render(entities: Sequence[str], attributes: Sequence[str], query: int) -> str:
    sentences = [_sentence(e, a) for e, a in zip(entities, attributes, strict=True)]
    return " ".join([*sentences, _QUERY.format(entity=entities[query])])


@validates_inputs
def binding_prompts(
    n: int,
    *,
    n_pairs: int = 4,
    seed: int | torch.Generator = 0,
    tokenizer: Any = None,
    entities: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
) -> BindingPrompts:
    """``n`` binding prompts of ``n_pairs`` entity–attribute pairs each (see the module
    docstring).

    Args:
        n: prompts to draw (an int >= 1; the same prompt may be drawn twice).
        n_pairs: pairs stated per prompt (>= 2: the distractor is another pair's
            attribute). With the default 4 a prompt is 28 tokens where ``"The"``,
            ``"holds"`` and ``"the"`` are one token each (38 with the shipped LM's
            tokenizer), plus BOS: more than ``analyze`` needs at its default
            ``block_size=8`` (18 tokens).
        seed: an int or a ``torch.Generator`` (one draw of it seeds the prompts).
        tokenizer: ``None`` (no token ids; any word may be drawn), a Hugging Face
            tokenizer, or a model holding one as ``.tokenizer``: only words that are one
            token as they follow ``"The"`` / ``"the"`` are drawn, and the answers' and
            distractors' ids are returned.
        entities: the entity words to draw from (single words without spaces or periods,
            none of them in ``attributes``), or ``None`` for :data:`ENTITIES`.
        attributes: the attribute words to draw from (the same rules), or ``None`` for
            :data:`ATTRIBUTES`.

    Raises :class:`~rope_behavior.RopeBehaviorError` when fewer than ``n_pairs`` entities or
    attributes are usable (too few words, or too few single tokens of the tokenizer), and
    when a drawn prompt's tokens disagree with its words' tokens (named in the message).
    """
    n = as_count(n, "n", hint="the number of prompts")
    n_pairs = as_count(
        n_pairs,
        "n_pairs",
        low=_MIN_PAIRS,
        hint="pairs per prompt; the distractor is another pair's",
    )
    rng = random.Random(as_seed(seed))
    ents = _words(entities, "entities", ENTITIES)
    attrs = _words(attributes, "attributes", ATTRIBUTES)
    both = sorted(set(ents) & set(attrs))
    if both:
        raise RopeBehaviorError(
            f"{both[:5]} are both entities and attributes; expected two disjoint word lists"
        )
    tok, ent_ids, ids = None, None, None
    if tokenizer is not None:
        tok = _tokenizer(tokenizer)
        ent_ids = _single_tokens(tok, ents, "The")
        ids = _single_tokens(tok, attrs, _QUERY.format(entity=ents[0]))
    ents = _usable(ents, ent_ids, "entities", n_pairs)
    attrs = _usable(attrs, ids, "attributes", n_pairs)
    rows = []
    for _ in range(n):
        es, at = tuple(rng.sample(ents, n_pairs)), tuple(rng.sample(attrs, n_pairs))
        q = rng.randrange(n_pairs)
        d = rng.choice([j for j in range(n_pairs) if j != q])
        rows.append((es, at, q, d))
    prompts = BindingPrompts(
        texts=tuple(_render(es, at, q) for es, at, q, _ in rows),
        answers=tuple(f" {at[q]}" for _, at, q, _ in rows),
        distractors=tuple(f" {at[d]}" for _, at, _, d in rows),
        entities=tuple(r[0] for r in rows),
        attributes=tuple(r[1] for r in rows),
        queried=tuple(r[2] for r in rows),
        distractor_pair=tuple(r[3] for r in rows),
        answer_ids=None if ids is None else torch.tensor([ids[at[q]] for _, at, q, _ in rows]),
        distractor_ids=None if ids is None else torch.tensor([ids[at[d]] for _, at, _, d in rows]),
    )
    if tok is not None:
        _check_tokens(tok, prompts)
    return prompts


def _words(words: Sequence[str] | None, what: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """The words to draw from, without repeats: single words without spaces or periods."""
    if words is None:
        return default
    if (
        isinstance(words, str)
        or not isinstance(words, Sequence)
        or not all(isinstance(w, str) for w in words)
    ):
        raise RopeBehaviorError(
            f"{what}={_brief(words)}; expected a list of words (str), or None for the built-in list"
        )
    bad = [w for w in words if not w or "." in w or any(c.isspace() for c in w)]
    if bad:
        raise RopeBehaviorError(
            f"{what} holds {bad[:5]!r}; expected single words, without spaces or periods"
        )
    return tuple(dict.fromkeys(words))


def _usable(
    words: tuple[str, ...], ids: dict[str, int] | None, what: str, n_pairs: int
) -> tuple[str, ...]:
    """``words`` (those in ``ids`` when given: single tokens), at least ``n_pairs`` of them."""
    kept = words if ids is None else tuple(w for w in words if w in ids)
    if len(kept) >= n_pairs:
        return kept
    of_tok = (
        "" if ids is None else f" of the {len(words)} given are single tokens of this tokenizer"
    )
    shown = f" ({', '.join(kept)})" if kept else ""
    most = f"lower n_pairs to {len(kept)}, or " if len(kept) >= _MIN_PAIRS else ""
    raise RopeBehaviorError(
        f"n_pairs={n_pairs} needs {n_pairs} distinct {what} per prompt, but only "
        f"{len(kept)}{of_tok}{shown}; {most}pass more {what}= (common words, each one token "
        "with a leading space)"
    )


def _tokenizer(tokenizer: Any) -> Any:
    """The tokenizer: a model's ``.tokenizer``, or ``tokenizer`` itself when it encodes."""
    if hasattr(tokenizer, "tokenizer") and not callable(getattr(tokenizer, "encode", None)):
        tok = tokenizer.tokenizer
        if tok is None:
            raise RopeBehaviorError(
                f"tokenizer={_brief(tokenizer)} is a model without a tokenizer; pass a model "
                "loaded with its tokenizer files, a Hugging Face tokenizer, or None"
            )
    else:
        tok = tokenizer
    if not callable(getattr(tok, "encode", None)) or not callable(getattr(tok, "decode", None)):
        raise RopeBehaviorError(
            f"tokenizer={_brief(tokenizer)} cannot encode text; expected a Hugging Face "
            "tokenizer (encode / decode), a model holding one as .tokenizer, or None"
        )
    return tok


def _encode(tok: Any, text: str) -> list[int]:
    try:
        out = tok.encode(text, add_special_tokens=False)
    except Exception as e:  # whatever the tokenizer raises, said with the text
        raise RopeBehaviorError(
            f"the tokenizer {type(tok).__name__} cannot encode {text!r} ({e}); expected a "
            "Hugging Face tokenizer's encode(text, add_special_tokens=False)"
        ) from None
    return [int(i) for i in getattr(out, "ids", out)]  # a tokenizers.Encoding holds .ids


def _single_tokens(tok: Any, words: Sequence[str], context: str) -> dict[str, int]:
    """The words that are one token as they follow ``context`` (after a space), with their
    ids; of two words with one id, the first."""
    base = _encode(tok, context)
    out: dict[str, int] = {}
    for word in words:
        ids = _encode(tok, f"{context} {word}")
        if len(ids) == len(base) + 1 and ids[:-1] == base and ids[-1] not in out.values():
            out[word] = ids[-1]
    return out


def _check_tokens(tok: Any, prompts: BindingPrompts) -> None:
    """Each prompt followed by its answer / distractor is the prompt's tokens then that
    word's id, and every prompt has one length."""
    answer_ids, distractor_ids = (
        [] if t is None else t.tolist() for t in (prompts.answer_ids, prompts.distractor_ids)
    )
    length = None
    for i, text in enumerate(prompts.texts):
        ids = _encode(tok, text)
        for word, wid in (
            (prompts.answers[i], answer_ids[i]),
            (prompts.distractors[i], distractor_ids[i]),
        ):
            if _encode(tok, text + word) != [*ids, wid]:
                raise RopeBehaviorError(
                    f"binding prompt {i} {text!r}: followed by {word!r} it does not tokenize "
                    f"as its own tokens then {word!r} (id {wid}); this tokenizer merges tokens "
                    "across words, so its answers are not one token in place: pass "
                    "entities= / attributes= it keeps apart, or tokenizer=None"
                )
        if length is not None and len(ids) != length:
            raise RopeBehaviorError(
                f"binding prompt {i} {text!r} is {len(ids)} tokens, prompt 0 {length}: this "
                "tokenizer splits the fixed words differently in places; pass tokenizer=None"
            )
        length = len(ids)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
