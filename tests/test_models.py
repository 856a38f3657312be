"""The model catalog: what /v1/models lists (each model once) and what requests may name."""

from __future__ import annotations

import pytest

from gateway.engine.models import ModelCatalog
from gateway.errors import ErrorKind, GatewayError


def test_each_model_is_listed_once_and_every_old_name_still_resolves() -> None:
    catalog = ModelCatalog({"fast": "haiku", "claude-opus-4": "claude-opus-4-5-20251101"})
    assert catalog.listed_names() == ["claude-opus-4", "claude-sonnet-4", "claude-haiku-4", "fast"]
    for family in ("opus", "sonnet", "haiku"):
        assert catalog.resolve(family) == family  # the short names: accepted, not listed
        assert catalog.resolve(family.upper()) == family
    assert catalog.resolve("claude-sonnet-4") == "sonnet"
    assert catalog.resolve("fast") == "haiku"
    assert catalog.resolve("claude-opus-4") == "claude-opus-4-5-20251101"  # an alias wins
    assert catalog.resolve("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5-20250929"
    with pytest.raises(GatewayError) as caught:
        catalog.resolve("gpt-4o")
    assert caught.value.kind is ErrorKind.UNKNOWN_MODEL
    assert "sonnet" in caught.value.message and "fast" in caught.value.message
