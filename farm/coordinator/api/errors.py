"""The error answers routes give, for their OpenAPI documents: every 4xx a route can return is listed.

Each is `{"detail": "what to fix"}`; a request that fails validation gets FastAPI's list of
problems in `detail` instead, so a 422 documented here takes either.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError


class Problem(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what is wrong and what to do; for a request that failed validation, one entry each"
    )


DESCRIPTIONS = {
    400: "malformed request",
    401: "no token, or an unknown one",
    403: "this token's role (or printer) may not do this",
    404: "no such thing",
    409: "conflicts with the current state",
    410: "gone: it expired",
    413: "too large",
    415: "unsupported file type",
    422: "invalid request: the detail says what to fix",
    503: "the coordinator cannot do this now (e.g. it has no queue)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these status codes (see DESCRIPTIONS)."""
    return {code: {"model": Problem, "description": DESCRIPTIONS[code]} for code in codes}


def document_body_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """Adds the 400 that FastAPI itself answers to a body it cannot parse (not UTF-8, a broken
    form) to every operation that takes a body, whichever router it comes from."""
    for path in openapi.get("paths", {}).values():
        for operation in path.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault(
                    "400",
                    {
                        "description": "the body could not be read (not UTF-8, not JSON, a broken form)",
                        "content": {"application/json": {"schema": Problem.model_json_schema()}},
                    },
                )
    return openapi


def nul_in_text(exc: BaseException) -> bool:
    """PostgreSQL's refusal of a NUL character (which SQLite stores): the caller's input, not a
    fault of the farm's."""
    return isinstance(exc, DataError) and "NUL (0x00)" in str(exc.orig)


# As FastAPI's validation errors are (a list of problems), so that every route that takes input
# documents it already.
NUL_IN_TEXT = [
    {"loc": ["request"], "msg": "text cannot contain NUL (\\u0000) characters", "type": "string_nul"}
]


# Every route behind a token: on the routers, so that routes added later are documented too.
AUTH = errors(401, 403)
