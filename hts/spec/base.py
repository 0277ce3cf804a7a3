"""What every campaign settings model shares: strictness, the campaign's error, the hash marks."""

from __future__ import annotations

from pydantic import BaseModel

from hts.config import Strict

__all__ = [
    "HASHED_UNLESS_DEFAULT",
    "NOT_HASHED",
    "NOT_HASHED_SINCE_2026_12",
    "CampaignError",
    "Strict",
    "unhashed",
]


class CampaignError(ValueError):
    """A campaign file that cannot be run; the message names the file and the field."""


# A field marked so says where or how the work runs, not what it computes: it is left out of
# the campaign hash, so a store may be resumed with it changed (see Campaign.content_hash).
NOT_HASHED = {"hashed": False}
# The same, for fields that hts 2026.11 and earlier did hash: stores those versions created
# carry a hash with them in it, which is still accepted (Campaign.legacy_hash).
NOT_HASHED_SINCE_2026_12 = {"hashed": False, "hashed_before": "2026.12"}
# A field added after stores existed, whose default computes what hts computed before it: hashed
# only when set to something else, so a campaign that does not use it keeps the hash its store
# carries (and resumes), while one that sets it is a different campaign.
HASHED_UNLESS_DEFAULT = {"hashed": "unless default"}


def unhashed(model: BaseModel, legacy: bool = False) -> dict:
    """The nested ``exclude`` of every field marked not hashed, under ``model``.

    A field marked :data:`HASHED_UNLESS_DEFAULT` is left out while it has its default.

    ``legacy``: as hts did before 2026.12, hashing fields marked
    :data:`NOT_HASHED_SINCE_2026_12`.
    """
    out: dict = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        value = getattr(model, name)
        left_out = extra == NOT_HASHED or (extra == NOT_HASHED_SINCE_2026_12 and not legacy)
        if left_out or (
            extra == HASHED_UNLESS_DEFAULT and value == info.get_default(call_default_factory=True)
        ):
            out[name] = True
        elif isinstance(value, BaseModel) and (sub := unhashed(value, legacy)):
            out[name] = sub
    return out
