"""Stop strings: the one place that decides where generated text ends."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["cut_at_stops", "has_stop"]


def has_stop(text: str, stops: Sequence[str]) -> bool:
    """Whether ``text`` contains any non-empty stop string."""
    return any(s and s in text for s in stops)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` cut before the earliest occurrence of any stop string; empty stop strings are ignored."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]
