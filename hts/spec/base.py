"""What every campaign settings model shares: strictness, the campaign's error, the hash marks."""

from __future__ import annotations

from pydantic import BaseModel

from hts.config import Strict

__all__ = ["NOT_HASHED", "CampaignError", "Strict", "unhashed"]


class CampaignError(ValueError):
    """A campaign file that cannot be run; the message names the file and the field."""


# A field marked so says where or how the work runs, not what it computes: it is left out of
# the campaign hash, so a store may be resumed with it changed (see Campaign.content_hash).
NOT_HASHED = {"hashed": False}


def unhashed(model: BaseModel) -> dict:
    """The nested ``exclude`` of every field marked :data:`NOT_HASHED`, under ``model``."""
    out: dict = {}
    for name, info in type(model).model_fields.items():
        if info.json_schema_extra == NOT_HASHED:
            out[name] = True
        elif isinstance(value := getattr(model, name), BaseModel) and (sub := unhashed(value)):
            out[name] = sub
    return out
