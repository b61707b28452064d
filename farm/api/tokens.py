"""Tokens for people and machines: each with a role, an agent's bound to one printer."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlmodel import col, select

from farm.api.deps import SessionDep, hash_secret, new_secret, require
from farm.models import Token

router = APIRouter(prefix="/api/tokens", tags=["tokens"], dependencies=[Depends(require())])

Role = Literal["admin", "submitter", "worker", "agent"]


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Role
    printer: str | None = Field(None, description="an agent token acts only for this printer")


def _view(token: Token) -> dict:
    return {"name": token.name, "role": token.role, "printer": token.printer, "created_at": token.created_at}


@router.post("", status_code=201)
def create_token(body: NewToken, session: SessionDep) -> dict:
    if body.role == "agent" and not body.printer:
        raise HTTPException(422, "an agent token is bound to one printer: give --printer NAME")
    if body.role != "agent" and body.printer:
        raise HTTPException(422, "only agent tokens are bound to a printer; drop --printer")
    if session.exec(select(Token).where(Token.name == body.name)).first() is not None:
        raise HTTPException(409, f"a token named '{body.name}' exists; pick another name")
    secret = new_secret()
    token = Token(name=body.name, role=body.role, printer=body.printer, secret_sha256=hash_secret(secret))
    session.add(token)
    session.commit()
    return {**_view(token), "token": secret}  # the only time the secret is shown


@router.get("")
def list_tokens(session: SessionDep) -> list[dict]:
    return [_view(t) for t in session.exec(select(Token).order_by(col(Token.id))).all()]
