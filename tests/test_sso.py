"""Heroku add-on SSO verification (authz.facts.sso) and the replay guard (authz.facts.replay)."""

from __future__ import annotations

import hashlib
import multiprocessing
import sys
import threading
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.facts.replay import RETENTION, ReplayGuard
from authz.facts.sso import (
    FORM_FIELDS,
    SSO_BAD_TOKEN,
    SSO_FUTURE_TIMESTAMP,
    SSO_LEGACY_TOKEN,
    SSO_MALFORMED,
    SSO_MISSING_FIELD,
    SSO_NO_SALT,
    SSO_SHA256_REQUIRED,
    SSO_STALE_TIMESTAMP,
    SsoError,
    SsoLogin,
    resource_token,
    user_scoped_resource_token,
    verify_sso_form,
)
from authz.store import Database, open_store
from tests.clock import FakeClock
from tests.pg import Backend, count

# The reference document's sha256 test vector.
SALT = "2f97bfa52ca102f8874716e2eb1d3b4920ad0be4"
RESOURCE_ID = "01234567-89ab-cdef-0123-456789abcdef"
USER_ID = "038df634-6962-43b9-a1ec-9ff09b8ce665"
EMAIL = "user@example.com"
TS = 1267597772
SHA256_DIGEST = "333d1434c7d0000577771aa3a8efc40d555b8620975467d469c994c34a69165a"
SHA1_DIGEST = resource_token(RESOURCE_ID, SALT, str(TS))


def sha256_form(
    *,
    salt: str = SALT,
    ts: int = TS,
    resource_id: str = RESOURCE_ID,
    user_id: str = USER_ID,
    email: str = EMAIL,
) -> dict[str, str]:
    return {
        "resource_id": resource_id,
        "timestamp": str(ts),
        "user_id": user_id,
        "email": email,
        "app": "billing-app",
        "context_app": "context-app",
        "user_scoped_resource_token": user_scoped_resource_token(
            resource_id, salt, str(ts), user_id, email
        ),
        "nav-data": "eyJhZGRvbiI6ICJleGFtcGxlIn0",
    }


def sha1_form(*, salt: str = SALT, ts: int = TS, resource_id: str = RESOURCE_ID) -> dict[str, str]:
    return {
        "resource_id": resource_id,
        "timestamp": str(ts),
        "user_id": USER_ID,
        "email": EMAIL,
        "app": "billing-app",
        "resource_token": resource_token(resource_id, salt, str(ts)),
    }


def refuse(form: Mapping[str, str], code: str, **kwargs: object) -> SsoError:
    params: dict[str, object] = {"salts": (SALT,), "now": TS + 5}
    params.update(kwargs)
    with pytest.raises(SsoError) as info:
        verify_sso_form(form, **params)  # type: ignore[arg-type]
    assert info.value.code == code, str(info.value)
    return info.value


# --- reference test vectors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "digest"),
    [
        (
            "123:2f97bfa52ca102f8874716e2eb1d3b4920ad0be4:1267597772",
            "bb466eb1d6bc345d11072c3cd25c311f21be130d",
        ),
        ("1:SSO_SALT:1262304000", "b6010f6fbb850887a396c2bc0ab23974003008f6"),
        ("123:salty:567", "8bcafa70e186a8f9b85a1c93f3b6b0507748ec7a"),
    ],
)
def test_sha1_reference_vectors(message: str, digest: str) -> None:
    assert hashlib.sha1(message.encode()).hexdigest() == digest
    resource_id, salt, timestamp = message.split(":")
    assert resource_token(resource_id, salt, timestamp) == digest


def test_sha256_reference_vector_formula() -> None:
    assert user_scoped_resource_token(RESOURCE_ID, SALT, str(TS), USER_ID, EMAIL) == SHA256_DIGEST


def test_sha256_reference_vector_verifies() -> None:
    form = {
        "resource_id": RESOURCE_ID,
        "timestamp": "1267597772",
        "user_id": USER_ID,
        "email": EMAIL,
        "user_scoped_resource_token": SHA256_DIGEST,
        "app": "billing-app",
        "context_app": "context-app",
    }
    login = verify_sso_form(form, salts=[SALT], now=1267597772 + 12.5)
    assert login == SsoLogin(
        resource_id=RESOURCE_ID,
        user_id=USER_ID,
        email=EMAIL,
        app="billing-app",
        context_app="context-app",
        timestamp=TS,
        token_kind="sha256",
        replay_key=login.replay_key,
        expires_at=TS + 300.0,
    )


def test_sha1_reference_vector_verifies() -> None:
    form = {
        "resource_id": "123",
        "timestamp": "1267597772",
        "user_id": USER_ID,
        "resource_token": "bb466eb1d6bc345d11072c3cd25c311f21be130d",
    }
    login = verify_sso_form(form, salts=[SALT], now=TS, allow_sha1=True)
    assert (login.token_kind, login.resource_id, login.user_id) == ("sha1", "123", USER_ID)
    assert login.email == "" and login.app == "" and login.context_app == ""


# --- accepted forms ---------------------------------------------------------------------------


def test_valid_sha256_form_is_accepted() -> None:
    login = verify_sso_form(sha256_form(), salts=[SALT], now=TS + 1)
    assert login.token_kind == "sha256"
    assert (login.app, login.context_app) == ("billing-app", "context-app")


def test_valid_sha1_form_is_accepted_only_when_allowed() -> None:
    login = verify_sso_form(sha1_form(), salts=[SALT], now=TS + 1, allow_sha1=True)
    assert login.token_kind == "sha1"
    assert login.user_id == USER_ID
    err = refuse(sha1_form(), SSO_SHA256_REQUIRED)  # the default
    assert "user_scoped_resource_token" in err.message and not err.invalid_argument


def test_upper_case_token_is_accepted() -> None:
    form = sha256_form()
    form["user_scoped_resource_token"] = form["user_scoped_resource_token"].upper()
    login = verify_sso_form(form, salts=[SALT], now=TS)
    assert login.replay_key == verify_sso_form(sha256_form(), salts=[SALT], now=TS).replay_key


def test_salt_rotation_second_salt_verifies() -> None:
    form = sha256_form(salt="new-salt-after-rotation")
    login = verify_sso_form(form, salts=[SALT, "new-salt-after-rotation"], now=TS)
    assert login.user_id == USER_ID
    login = verify_sso_form(sha1_form(), salts=["another-salt", SALT], now=TS, allow_sha1=True)
    assert login.token_kind == "sha1"


def test_empty_salts_are_ignored_but_others_still_work() -> None:
    assert verify_sso_form(sha256_form(), salts=["", SALT], now=TS).user_id == USER_ID


def test_exactly_max_age_old_is_accepted() -> None:
    assert verify_sso_form(sha256_form(), salts=[SALT], now=TS + 300).timestamp == TS


def test_thirty_seconds_ahead_is_accepted() -> None:
    assert verify_sso_form(sha256_form(), salts=[SALT], now=TS - 30).timestamp == TS
    assert verify_sso_form(sha256_form(), salts=[SALT], now=TS - 60).timestamp == TS


def test_replay_key_names_the_form_and_hides_the_token() -> None:
    a = verify_sso_form(sha256_form(), salts=[SALT], now=TS)
    b = verify_sso_form(sha256_form(), salts=[SALT], now=TS + 100)
    c = verify_sso_form(sha256_form(ts=TS + 1), salts=[SALT], now=TS)
    d = verify_sso_form(sha1_form(), salts=[SALT], now=TS, allow_sha1=True)
    assert a.replay_key == b.replay_key
    assert a.replay_key != c.replay_key
    assert SHA256_DIGEST not in a.replay_key and SHA256_DIGEST not in repr(a)
    assert SHA1_DIGEST not in d.replay_key and SHA1_DIGEST not in repr(d)
    assert a.expires_at == TS + 300
    assert verify_sso_form(sha256_form(), salts=[SALT], now=TS, max_age=120).expires_at == TS + 120


def test_a_form_with_both_tokens_has_one_replay_key_whichever_token_verifies() -> None:
    both = dict(sha256_form(), resource_token=SHA1_DIGEST)
    by_sha256 = verify_sso_form(both, salts=[SALT], now=TS, allow_sha1=True)
    by_sha1 = verify_sso_form(
        dict(both, user_scoped_resource_token=""), salts=[SALT], now=TS, allow_sha1=True
    )
    assert (by_sha256.token_kind, by_sha1.token_kind) == ("sha256", "sha1")
    assert by_sha256.replay_key == by_sha1.replay_key


def test_sha1_replay_key_includes_the_user() -> None:
    # Two users opening the add-on in the same second get the same SHA-1 token.
    other_user = "11111111-2222-3333-4444-555555555555"
    mine = verify_sso_form(sha1_form(), salts=[SALT], now=TS, allow_sha1=True)
    theirs = verify_sso_form(
        dict(sha1_form(), user_id=other_user), salts=[SALT], now=TS, allow_sha1=True
    )
    assert mine.replay_key != theirs.replay_key
    sha256_theirs = verify_sso_form(sha256_form(user_id=other_user), salts=[SALT], now=TS)
    assert sha256_theirs.replay_key == theirs.replay_key


# --- refused forms ----------------------------------------------------------------------------


def test_wrong_token_is_refused() -> None:
    form = sha256_form()
    form["user_scoped_resource_token"] = "0" * 64
    err = refuse(form, SSO_BAD_TOKEN)
    assert not err.invalid_argument
    form = sha1_form()
    form["resource_token"] = "f" * 40
    refuse(form, SSO_BAD_TOKEN, allow_sha1=True)


def test_wrong_salt_is_refused() -> None:
    refuse(sha256_form(salt="not-the-salt"), SSO_BAD_TOKEN)
    refuse(sha1_form(salt="not-the-salt"), SSO_BAD_TOKEN, allow_sha1=True)


@pytest.mark.parametrize("field", ["resource_id", "timestamp", "user_id", "email"])
def test_altering_a_signed_field_is_refused(field: str) -> None:
    form = sha256_form()
    form[field] = {"timestamp": str(TS - 1), "resource_id": "1" + RESOURCE_ID[1:]}.get(
        field, "other@example.com" if field == "email" else "11111111-2222-3333-4444-555555555555"
    )
    refuse(form, SSO_BAD_TOKEN)


def test_wrong_sha256_token_is_not_rescued_by_a_correct_sha1_token() -> None:
    form = sha256_form()
    form["user_scoped_resource_token"] = "a" * 64
    form["resource_token"] = SHA1_DIGEST
    refuse(form, SSO_BAD_TOKEN)


def test_sha1_refused_when_disabled() -> None:
    err = refuse(sha1_form(), SSO_SHA256_REQUIRED, allow_sha1=False)
    assert not err.invalid_argument
    # The SHA-256 token still works with SHA-1 disabled.
    assert verify_sso_form(sha256_form(), salts=[SALT], now=TS, allow_sha1=False)


def test_legacy_v1_token_is_refused() -> None:
    ts = "1262304000"
    form = {
        "id": "1",
        "token": hashlib.sha1(f"1:{SALT}:{ts}".encode()).hexdigest(),
        "timestamp": ts,
        "user_id": USER_ID,
        "resource_id": RESOURCE_ID,
    }
    refuse(form, SSO_LEGACY_TOKEN, now=1262304000)


def test_six_minute_old_timestamp_is_refused() -> None:
    # Heroku's old SSO test tool sent a timestamp exactly 6 minutes old and required a 403.
    err = refuse(sha256_form(), SSO_STALE_TIMESTAMP, now=TS + 360)
    assert "360 s old" in err.message and "300 s" in err.message
    assert "open the add-on again" in err.message
    assert not err.invalid_argument
    refuse(sha1_form(), SSO_STALE_TIMESTAMP, now=TS + 360, allow_sha1=True)
    refuse(sha256_form(), SSO_STALE_TIMESTAMP, now=TS + 300.5)


def test_lowered_max_age_is_honoured() -> None:
    refuse(sha256_form(), SSO_STALE_TIMESTAMP, now=TS + 121, max_age=120)


def test_future_timestamp_is_refused() -> None:
    err = refuse(sha256_form(), SSO_FUTURE_TIMESTAMP, now=TS - 61)
    assert "61 s in the future" in err.message
    refuse(sha256_form(), SSO_FUTURE_TIMESTAMP, now=TS - 3600)
    refuse(sha256_form(), SSO_FUTURE_TIMESTAMP, now=TS - 11, max_future=10)


@pytest.mark.parametrize(
    ("max_age", "max_future"), [(301, 60), (300, 61), (0, 60), (-1, 60), (300, -1)]
)
def test_window_can_only_be_lowered(max_age: float, max_future: float) -> None:
    with pytest.raises(ValueError):
        verify_sso_form(sha256_form(), salts=[SALT], now=TS, max_age=max_age, max_future=max_future)


def test_now_must_be_finite() -> None:
    with pytest.raises(ValueError):
        verify_sso_form(sha256_form(), salts=[SALT], now=float("nan"))


@pytest.mark.parametrize("field", ["resource_id", "timestamp", "user_id", "email"])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_field_sha256(field: str, how: str) -> None:
    form = sha256_form()
    if how == "absent":
        del form[field]
    else:
        form[field] = ""
    err = refuse(form, SSO_MISSING_FIELD)
    assert err.invalid_argument
    assert repr(field) in err.message


@pytest.mark.parametrize("field", ["resource_id", "timestamp", "user_id"])
def test_missing_field_sha1(field: str) -> None:
    form = sha1_form()
    del form[field]
    err = refuse(form, SSO_MISSING_FIELD, allow_sha1=True)
    assert repr(field) in err.message and err.invalid_argument


def test_sha1_form_does_not_need_email() -> None:
    form = sha1_form()
    del form["email"]
    assert verify_sso_form(form, salts=[SALT], now=TS, allow_sha1=True).email == ""


def test_missing_token() -> None:
    form = sha256_form()
    del form["user_scoped_resource_token"]
    err = refuse(form, SSO_MISSING_FIELD)
    assert "user_scoped_resource_token" in err.message
    refuse({}, SSO_MISSING_FIELD)


@pytest.mark.parametrize(
    "timestamp",
    [
        "abc",
        "12.5",
        "-5",
        "+1267597772",
        " 1267597772",
        "1267597772 ",
        "1_267_597_772",
        "١٢٣",
        "0x1",
    ],
)
def test_malformed_timestamp(timestamp: str) -> None:
    form = sha256_form()
    form["timestamp"] = timestamp
    err = refuse(form, SSO_MALFORMED)
    assert err.invalid_argument
    assert "timestamp" in err.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_scoped_resource_token", "z" * 64),
        ("user_scoped_resource_token", "a" * 63),
        ("user_scoped_resource_token", "a" * 65),
        ("user_scoped_resource_token", SHA1_DIGEST),
        ("user_id", USER_ID + ":x"),
        ("resource_id", RESOURCE_ID + ":x"),
        ("email", "user@example.com\r\nInjected: header"),
        ("app", "x" * 1025),
        ("nav-data", None),
    ],
)
def test_malformed_fields(field: str, value: str | None) -> None:
    form = sha256_form()
    if value is None:  # fields we do not read are not checked
        form[field] = "x" * 5000
        assert verify_sso_form(form, salts=[SALT], now=TS)
        return
    form[field] = value
    err = refuse(form, SSO_MALFORMED)
    assert err.invalid_argument


def test_malformed_sha1_token() -> None:
    form = sha1_form()
    form["resource_token"] = "g" * 40
    refuse(form, SSO_MALFORMED, allow_sha1=True)


def test_non_text_field_is_malformed() -> None:
    form: dict[str, object] = dict(sha256_form())
    form["timestamp"] = TS
    refuse(form, SSO_MALFORMED)  # type: ignore[arg-type]


def test_colon_in_user_id_cannot_borrow_from_email() -> None:
    # Same digest input, different identity: "U:a" + "b@x" == "U" + "a:b@x" after joining.
    token = user_scoped_resource_token(RESOURCE_ID, SALT, str(TS), USER_ID, "a:b@example.com")
    form = sha256_form(email="a:b@example.com")
    assert form["user_scoped_resource_token"] == token
    forged = dict(form, user_id=USER_ID + ":a", email="b@example.com")
    refuse(forged, SSO_MALFORMED)


@pytest.mark.parametrize("salts", [(), ("",), []])
def test_no_salt_fails_closed(salts: tuple[str, ...]) -> None:
    err = refuse(sha256_form(), SSO_NO_SALT, salts=salts)
    assert not err.invalid_argument


def test_error_messages_never_contain_secrets() -> None:
    salt = "very-secret-salt-0123456789abcdef"
    good = sha256_form(salt=salt)
    good_sha1 = sha1_form(salt=salt)
    secrets_ = [salt, good["user_scoped_resource_token"], good_sha1["resource_token"]]
    wrong = dict(good, user_scoped_resource_token="b" * 64)
    secrets_.append("b" * 64)
    cases: list[tuple[dict[str, str], dict[str, object]]] = [
        (good, {"now": TS + 360}),
        (good, {"now": TS - 120}),
        (good_sha1, {"now": TS + 360, "allow_sha1": True}),
        (good_sha1, {"allow_sha1": False}),
        (wrong, {}),
        (dict(good, user_scoped_resource_token=good["user_scoped_resource_token"][:-1]), {}),
        (dict(good, timestamp="x"), {}),
        ({k: v for k, v in good.items() if k != "email"}, {}),
        (good, {"salts": ["other-salt"]}),
        (good, {"salts": ["other-salt", salt + "x"]}),
        ({"id": "1", "token": good_sha1["resource_token"], "timestamp": str(TS)}, {}),
    ]
    for form, overrides in cases:
        params: dict[str, object] = {"salts": [salt], "now": TS}
        params.update(overrides)
        with pytest.raises(SsoError) as info:
            verify_sso_form(form, **params)  # type: ignore[arg-type]
        for text in (str(info.value), info.value.message, repr(info.value)):
            for secret in secrets_:
                assert secret not in text, (info.value.code, text)


# --- properties -------------------------------------------------------------------------------

PROPERTY_SALT = "property-test-salt-7c1e9a"
FIELD_NAMES = [*FORM_FIELDS, "nav-data"]  # what Heroku sends, and one field we ignore


def _correctly_signed(form: Mapping[str, str], login: SsoLogin) -> bool:
    ts = form["timestamp"]
    if login.token_kind == "sha256":
        expected = user_scoped_resource_token(
            form["resource_id"], PROPERTY_SALT, ts, form["user_id"], form["email"]
        )
        return form["user_scoped_resource_token"].lower() == expected
    expected = resource_token(form["resource_id"], PROPERTY_SALT, ts)
    return not form.get("user_scoped_resource_token") and form["resource_token"].lower() == expected


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    form=st.dictionaries(
        st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=20)),
        st.one_of(
            st.text(max_size=80),
            st.from_regex(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}", fullmatch=True),
            st.integers(min_value=TS - 1000, max_value=TS + 1000).map(str),
        ),
        max_size=12,
    ),
    now=st.floats(min_value=0, max_value=4e9),
    allow_sha1=st.booleans(),
)
def test_arbitrary_forms_raise_only_sso_error(
    form: dict[str, str], now: float, allow_sha1: bool
) -> None:
    try:
        login = verify_sso_form(form, salts=[PROPERTY_SALT], now=now, allow_sha1=allow_sha1)
    except SsoError as err:
        assert PROPERTY_SALT not in str(err)
        return
    assert _correctly_signed(form, login)
    assert login.token_kind == "sha256" or allow_sha1


@settings(max_examples=300)
@given(
    field=st.sampled_from(["resource_id", "timestamp", "user_id", "email"]),
    value=st.text(max_size=60),
    kind=st.sampled_from(["sha256", "sha1"]),
)
def test_tampering_with_a_signed_form_is_never_accepted(field: str, value: str, kind: str) -> None:
    make = sha256_form if kind == "sha256" else sha1_form
    form = make(salt=PROPERTY_SALT)
    original = form.get(field)
    form[field] = value
    try:
        login = verify_sso_form(form, salts=[PROPERTY_SALT], now=TS, allow_sha1=kind == "sha1")
    except SsoError:
        return
    # Only an unchanged signed field (or, for SHA-1, the unsigned user_id/email) may pass.
    assert _correctly_signed(form, login)
    assert value == original or (kind == "sha1" and field in ("user_id", "email"))


# --- replay guard (on SQLite and on PostgreSQL) ------------------------------------------------


def test_second_claim_is_refused(backend: Backend) -> None:
    clock = FakeClock(TS)
    guard = ReplayGuard(backend.open(), clock)
    login = verify_sso_form(sha256_form(), salts=[SALT], now=clock())
    assert guard.claim(login.replay_key, login.expires_at) is True
    assert guard.claim(login.replay_key, login.expires_at) is False
    # The same form posted again verifies, but its replay key is already spent.
    again = verify_sso_form(sha256_form(), salts=[SALT], now=clock() + 10)
    assert guard.claim(again.replay_key, again.expires_at) is False
    # A different form is unaffected.
    other = verify_sso_form(sha256_form(ts=TS + 1), salts=[SALT], now=clock())
    assert guard.claim(other.replay_key, other.expires_at) is True


def test_claim_works_again_after_expiry(backend: Backend) -> None:
    clock = FakeClock(TS)
    guard = ReplayGuard(backend.open(), clock)
    assert guard.claim("k", TS + 300)
    clock.advance(RETENTION)
    assert not guard.claim("k", TS + 300)
    clock.advance(1)
    assert guard.claim("k", TS + 600)
    assert not guard.claim("k", TS + 600)


def test_claim_keeps_a_key_for_the_ceiling_and_the_skew(backend: Backend) -> None:
    # A form verified just before its window closed must not be claimable twice just after.
    clock = FakeClock(TS + 301)
    guard = ReplayGuard(backend.open(), clock)
    assert guard.claim("late", TS + 300)
    clock.advance(RETENTION - 1)
    assert not guard.claim("late", TS + 300)
    clock.advance(2)
    assert guard.claim("late", TS + 300)
    assert RETENTION == 360.0  # 300 s of age plus 60 s of future skew, the largest allowed


def test_raising_the_configured_window_does_not_reopen_a_claimed_form(backend: Backend) -> None:
    """Issue 12 item 8: keys lived only for the configured max age."""
    clock = FakeClock(TS + 30)
    guard = ReplayGuard(backend.open(), clock)
    first = verify_sso_form(sha256_form(), salts=[SALT], now=clock(), max_age=60)
    assert guard.claim(first.replay_key, first.expires_at)
    clock.advance(170)  # the form is 200 s old: stale under max_age=60 ...
    refuse(sha256_form(), SSO_STALE_TIMESTAMP, now=clock(), max_age=60)
    # ... until the window is raised again (a restart, or another replica's configuration).
    again = verify_sso_form(sha256_form(), salts=[SALT], now=clock(), max_age=300)
    assert again.replay_key == first.replay_key
    assert not guard.claim(again.replay_key, again.expires_at)
    # A form dated 60 s ahead (the largest skew) stays claimed until its 300 s window closes.
    ahead = verify_sso_form(sha256_form(ts=int(clock()) + 60), salts=[SALT], now=clock())
    assert guard.claim(ahead.replay_key, ahead.expires_at)
    clock.advance(359)
    assert verify_sso_form(sha256_form(ts=ahead.timestamp), salts=[SALT], now=clock())
    assert not guard.claim(ahead.replay_key, ahead.expires_at)


def test_claim_is_shared_between_connections_and_persists(backend: Backend) -> None:
    clock = FakeClock(TS)
    assert ReplayGuard(backend.open(), clock).claim("k", TS + 300)
    assert not ReplayGuard(backend.open(), clock).claim("k", TS + 300)


def test_purge_expired(backend: Backend) -> None:
    clock = FakeClock(TS)
    db = backend.open()
    guard = ReplayGuard(db, clock)
    for i in range(5):
        assert guard.claim(f"k{i}", TS + 100 + i * 100)  # kept until 360, 360, 360, 400, 500
    clock.advance(450)
    assert guard.purge_expired() == 4
    assert count(db, "sso_replay") == 1
    # Claims purge opportunistically too.
    clock.advance(1000)
    assert guard.claim("fresh", clock() + 300)
    assert db.execute("SELECT replay_key FROM sso_replay").rows == [("fresh",)]


def test_claim_rejects_bad_arguments(backend: Backend) -> None:
    guard = ReplayGuard(backend.open(), FakeClock(TS))
    with pytest.raises(ValueError):
        guard.claim("", TS + 300)
    with pytest.raises(ValueError):
        guard.claim("k", float("nan"))


def test_racing_threads_exactly_one_wins(backend: Backend) -> None:
    # Every guard has its own connection (PostgreSQL: its own pool), as replicas would.
    threads_n, keys = 8, 25
    clock = FakeClock(TS)
    ReplayGuard(backend.open(), clock)  # create the table before the race
    guards = [ReplayGuard(backend.open(), clock) for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)
    wins: list[list[bool]] = [[] for _ in range(threads_n)]

    def run(i: int) -> None:
        for k in range(keys):
            barrier.wait()
            wins[i].append(guards[i].claim(f"key-{k}", TS + 300))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for k in range(keys):
        assert sum(wins[i][k] for i in range(threads_n)) == 1


def test_racing_for_an_expired_key_exactly_one_takes_it_over(backend: Backend) -> None:
    # The take-over branch (ON CONFLICT ... DO UPDATE ... WHERE expired) races too.
    threads_n, keys = 4, 12
    clock = FakeClock(TS)
    seed = ReplayGuard(backend.open(), clock)
    for k in range(keys):
        assert seed.claim(f"key-{k}", TS + 100)
    clock.advance(RETENTION + 1)  # every key's retention has passed; the rows are still there
    guards = [ReplayGuard(backend.open(), clock) for _ in range(threads_n)]
    for guard in guards:
        guard._next_purge = float("inf")  # no purge: race the take-over, not a fresh insert
    barrier = threading.Barrier(threads_n)
    wins: list[list[bool]] = [[] for _ in range(threads_n)]

    def run(i: int) -> None:
        for k in range(keys):
            barrier.wait()
            wins[i].append(guards[i].claim(f"key-{k}", clock() + 300))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for k in range(keys):
        assert sum(wins[i][k] for i in range(threads_n)) == 1


def _claim_in_process(target: str, barrier: object, keys: int, out: object) -> None:
    db: Database = open_store(target)
    guard = ReplayGuard(db, lambda: float(TS))
    results = []
    for k in range(keys):
        barrier.wait()  # type: ignore[attr-defined]
        results.append(guard.claim(f"key-{k}", TS + 300))
    db.close()
    out.put(results)  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method")
def test_racing_processes_exactly_one_wins(backend: Backend) -> None:
    processes_n, keys = 4, 20
    ReplayGuard(backend.open(), FakeClock(TS))  # create the table before the race
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes_n)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_process, args=(backend.target, barrier, keys, out))
        for _ in range(processes_n)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for k in range(keys):
        assert sum(r[k] for r in results) == 1
