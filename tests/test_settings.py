"""Settings validation: whole-or-nothing, every violation reported, key masked."""

from __future__ import annotations

import pytest

from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.settings import Settings, SettingsUpdate, apply, mask_key

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"
LOCAL = "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    ("update", "field"),
    [
        (SettingsUpdate(endpoint="file:///etc/passwd"), "endpoint"),
        (SettingsUpdate(endpoint="ftp://example.com/v1"), "endpoint"),
        (SettingsUpdate(endpoint="https://user:pass@example.com/v1"), "endpoint"),
        (SettingsUpdate(endpoint="https://example.com/v1?x=1"), "endpoint"),
        (SettingsUpdate(endpoint="https:///v1"), "endpoint"),
        (SettingsUpdate(endpoint="https://example.com:99999/v1"), "endpoint"),
        (SettingsUpdate(endpoint="https://exa mple.com/v1"), "endpoint"),
        (SettingsUpdate(endpoint="https://example.com/" + "a" * 100_000), "endpoint"),
        (SettingsUpdate(api_key=""), "api_key"),
        (SettingsUpdate(api_key="not-an-openai-key"), "api_key"),
        (SettingsUpdate(api_key=KEY + "\nX-Injected: 1"), "api_key"),
        (SettingsUpdate(api_key="sk-short"), "api_key"),
        (SettingsUpdate(default_model=""), "default_model"),
        (SettingsUpdate(organization="has space"), "organization"),
        (SettingsUpdate(request_timeout=0), "request_timeout"),
        (SettingsUpdate(request_timeout=float("nan")), "request_timeout"),
        (SettingsUpdate(max_attempts=0), "retry_policy.max_attempts"),
        (SettingsUpdate(max_attempts=11), "retry_policy.max_attempts"),
        (SettingsUpdate(initial_backoff=-1), "retry_policy.initial_backoff"),
        (SettingsUpdate(initial_backoff=5, max_backoff=1), "retry_policy.max_backoff"),
    ],
)
def test_invalid_updates_are_refused_whole(update: SettingsUpdate, field: str) -> None:
    current = Settings(api_key=KEY)
    with pytest.raises(GatewayError) as info:
        apply(current, update)
    assert info.value.reason is Reason.INVALID_REQUEST
    assert field in [v.field for v in info.value.field_violations]
    assert KEY not in info.value.message


def test_all_violations_reported_at_once_and_nothing_applied() -> None:
    current = Settings(api_key=KEY)
    update = SettingsUpdate(endpoint="ftp://x", default_model="", max_attempts=0, api_key="bad key")
    with pytest.raises(GatewayError) as info:
        apply(current, update)
    fields = {v.field for v in info.value.field_violations}
    assert {"endpoint", "default_model", "retry_policy.max_attempts"} <= fields


def test_custom_endpoint_accepts_any_printable_token() -> None:
    s = apply(Settings(), SettingsUpdate(endpoint=LOCAL + "/", api_key="ollama"))
    assert (s.endpoint, s.api_key, s.generation) == (LOCAL, "ollama", 1)


def test_openai_endpoint_requires_sk_key() -> None:
    s = apply(Settings(), SettingsUpdate(endpoint=LOCAL, api_key="ollama"))
    with pytest.raises(GatewayError) as info:
        apply(s, SettingsUpdate(endpoint="https://api.openai.com/v1"))
    assert [v.field for v in info.value.field_violations] == ["api_key"]


def test_partial_update_keeps_other_fields_and_empty_clears_org() -> None:
    s = apply(Settings(), SettingsUpdate(api_key=KEY, organization="org-1", project="proj-1"))
    s2 = apply(s, SettingsUpdate(organization="", max_attempts=5))
    assert (s2.api_key, s2.organization, s2.project, s2.retry.max_attempts) == (KEY, None, "proj-1", 5)


@pytest.mark.parametrize(
    ("key", "masked"),
    [(KEY, "sk-...0123"), ("ollama", "..."), (None, ""), ("localtoken-123456", "...3456")],
)
def test_mask_key(key: str | None, masked: str) -> None:
    assert mask_key(key) == masked


def test_repr_never_shows_the_key() -> None:
    s = Settings(api_key=KEY)
    assert KEY not in repr(s)
    assert KEY not in repr(SettingsUpdate(api_key=KEY))
