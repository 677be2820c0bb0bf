"""Hidden reasoning: the keys that carry a model's raw reasoning, and the one
normal form in which keys and field names are compared with them."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = ["DEFAULT_HIDDEN_KEYS", "check_field_names", "normal_key"]

#: Keys that carry a model's raw, hidden reasoning: the names model APIs and
#: agent frameworks use for it. Compared in normal form (see :func:`normal_key`),
#: so ``"Chain Of Thought"``, ``chain.of.thought`` and full-width ``COT`` match.
DEFAULT_HIDDEN_KEYS: frozenset[str] = frozenset(
    {
        "chain_of_thought",
        "cot",
        "hidden_reasoning",
        "raw_reasoning",
        "reasoning_trace",
        "internal_reasoning",
        "reasoning",
        "reasoning_content",
        "reasoning_details",
        "reasoning_text",
        "thinking",
        "redacted_thinking",
        "thinking_blocks",
        "thought",
        "thoughts",
        "thought_process",
        "scratchpad",
        "inner_monologue",
        "internal_monologue",
    }
)

#: Normal forms computed so far, for keys up to ``_KEPT_LENGTH`` characters;
#: cleared when it holds ``_KEPT`` of them, so hostile keys cost time, never
#: memory.
_KEPT = 65_536
_KEPT_LENGTH = 128
_normal: dict[str, str] = {}
#: Letters by Unicode's reckoning that show nothing (the Hangul fillers): removed
#: like the zero-width characters, which are not letters.
_INVISIBLE = str.maketrans(dict.fromkeys(map(ord, "\u115f\u1160\u3164\uffa0")))


def normal_key(key: str) -> str:
    """*key* as hidden-reasoning keys are compared: NFKC-normalised, case-folded
    (and normalised again), with every character that is not a letter or a digit
    (and the invisible Hangul fillers) removed. ``"Chain Of Thought"``,
    ``chain.of.thought``, ``CHAIN-OF-THOUGHT`` and ``chain\\u200bof\\u200bthought``
    all become ``"chainofthought"``; full-width ``"\\uff23\\uff2f\\uff34"``
    becomes ``"cot"``."""
    if type(key) is not str:
        key = str.__str__(key)  # a subclass's own hash and eq are not trusted
    normal = _normal.get(key)
    if normal is None:
        folded = unicodedata.normalize("NFKC", key).casefold()
        folded = unicodedata.normalize("NFKC", folded).translate(_INVISIBLE)
        normal = "".join(ch for ch in folded if ch.isalnum())
        if len(key) <= _KEPT_LENGTH:
            if len(_normal) >= _KEPT:
                _normal.clear()
            _normal[key] = normal
    return normal


#: The normal forms of :data:`DEFAULT_HIDDEN_KEYS`.
DEFAULT_NORMAL: frozenset[str] = frozenset(normal_key(k) for k in DEFAULT_HIDDEN_KEYS)


def check_field_names(cls: type, names: Iterable[str]) -> None:
    """Refuse the event class *cls* if one of its field *names* is, in normal
    form, one of :data:`DEFAULT_HIDDEN_KEYS`.

    :raises TypeError: naming the class and the field
    """
    for name in names:
        if normal_key(name) in DEFAULT_NORMAL:
            raise TypeError(
                f"event class {cls.__qualname__} may not have a field named "
                f"{name!r}: it is a hidden-reasoning key (reasoning reaches "
                "consumers only as a ReasoningSummary)"
            )
