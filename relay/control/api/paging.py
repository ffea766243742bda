"""Cursor pagination: a page is fetched one item long, and the extra item only says that
another page follows; the cursor is the last returned item's id (or audit seq), so pages
stay right while items are added."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, TypeVar

from fastapi import Query

from relay.control.api.models import MAX_PAGE

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Items per page (≤ {MAX_PAGE}).")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=64, pattern=r"^[A-Za-z0-9_]+$", description="`next_cursor` of the page before."
    ),
]


def after(items: Iterable[T], cursor: str | None, id_of: Callable[[T], str]) -> list[T]:
    """Items held in memory (the edge's live state), in id order, past ``cursor``."""
    return [i for i in sorted(items, key=id_of) if cursor is None or id_of(i) > cursor]


def cut(
    fetched: Sequence[T], limit: int, cursor_of: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """``fetched`` holds up to ``limit + 1`` items: the page, and the next cursor if more."""
    items = list(fetched[:limit])
    more = len(fetched) > limit
    return items, (cursor_of(items[-1]) if more and items else None)
