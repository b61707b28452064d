"""Paging for the list endpoints: `limit` and an opaque `cursor`.

A list answers with at most `limit` items, as before a JSON array (so clients that read one page
keep working). When more follow, the response carries the cursor for the next page in
`X-Next-Cursor` and the next page's address in `Link: <...>; rel="next"`. A cursor is the sort key
of the page's last item, so a page does not shift when rows are added meanwhile (ids only grow;
new items land on pages already read, never twice on one listing).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Query, Request, Response

from farm.coordinator.api.deps import MAX_ID
from farm.coordinator.api.errors import errors

T = TypeVar("T")

MAX_LIMIT = 1000
MAX_CURSOR = 1024
CURSOR_HEADER = "X-Next-Cursor"

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"items per page, 1 to {MAX_LIMIT}")]
Cursor = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=MAX_CURSOR,
        pattern=r"^[A-Za-z0-9_-]+$",
        description=f"where to go on: the previous page's {CURSOR_HEADER} header",
    ),
]


def paged(description: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a list endpoint: its 200 with the paging headers, and the 422 for a bad
    limit or cursor."""
    headers = {
        CURSOR_HEADER: {
            "description": "the cursor for the next page; absent on the last page",
            "schema": {"type": "string"},
        },
        "Link": {"description": 'the next page, `<url>; rel="next"`', "schema": {"type": "string"}},
    }
    return {200: {"description": description, "headers": headers}, **errors(422)}


def encode(key: int | str) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _decode(cursor: str) -> object:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        return None


def _bad(cursor: str) -> HTTPException:
    return HTTPException(422, f"cursor '{cursor[:40]}' is not one this list gave; start without one")


def after_id(cursor: str | None) -> int | None:
    """The id a cursor stands for (pages go on past it), None without one; a 422 for a bad one."""
    if cursor is None:
        return None
    key = _decode(cursor)
    if type(key) is not int or not 0 < key <= MAX_ID:
        raise _bad(cursor)
    return key


def after_name(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    key = _decode(cursor)
    if not isinstance(key, str):
        raise _bad(cursor)
    return key


def page(
    rows: Sequence[T], limit: int, key: Callable[[T], int | str], request: Request, response: Response
) -> list[T]:
    """The first `limit` of `rows` (fetched as limit + 1, to know whether more follow), with the
    next page's cursor and link set on the response when they do."""
    if len(rows) <= limit:
        return list(rows)
    shown = list(rows[:limit])
    cursor = encode(key(shown[-1]))
    response.headers[CURSOR_HEADER] = cursor
    url = request.url.remove_query_params("cursor").include_query_params(cursor=cursor)
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return shown
