"""One settings object, read from the environment (AUTHZ_*, PORT, DATABASE_URL)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MAX_ACCESS_TTL = 300.0
"""Heroku's rule: a cached list of authorized users is never older than 5 minutes."""
MAX_SSO_PAST_SECONDS = 300.0
MAX_SSO_FUTURE_SECONDS = 60.0


class ConfigError(ValueError):
    """A setting is missing or out of range; the message names the variable and the fix."""


def _read_secret(env: Mapping[str, str], name: str) -> str:
    """A secret comes from NAME, or from the file named by NAME_FILE (for mounted secrets)."""
    if env.get(name):
        return env[name]
    file_name = env.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from None
    return ""


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None


def _bounded(name: str, value: float, upper: float) -> float:
    if not 0 < value <= upper:
        raise ConfigError(f"{name}={value:g} must be more than 0 and at most {upper:g} seconds")
    return value


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    policy_dir: Path = Path("policies")
    data_dir: Path = Path("data")
    # SSO: several salts may be active at once so a salt can be rotated.
    sso_salts: tuple[str, ...] = ()
    sso_allow_sha1: bool = True
    sso_max_age: float = MAX_SSO_PAST_SECONDS
    sso_max_future: float = MAX_SSO_FUTURE_SECONDS
    session_ttl: float = 8 * 3600.0
    # Platform API for Partners.
    heroku_api_url: str = "https://api.heroku.com"
    heroku_id_url: str = "https://id.heroku.com"
    heroku_client_secret: str = field(default="", repr=False)
    token_key: str = field(default="", repr=False)
    access_ttl: float = 60.0
    facts_deadline: float = 2.0
    # Audit.
    audit_mode: str = "durable"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        listen = env.get("AUTHZ_LISTEN") or (f"0.0.0.0:{env['PORT']}" if env.get("PORT") else "")
        salts = tuple(
            s.strip() for s in _read_secret(env, "AUTHZ_SSO_SALT").split(",") if s.strip()
        )
        audit_mode = env.get("AUTHZ_AUDIT_MODE", "durable")
        if audit_mode not in ("durable", "async", "off"):
            raise ConfigError(f"AUTHZ_AUDIT_MODE={audit_mode!r} must be durable, async or off")
        return cls(
            listen=listen or cls.listen,
            policy_dir=Path(env.get("AUTHZ_POLICY_DIR") or cls.policy_dir),
            data_dir=Path(env.get("AUTHZ_DATA_DIR") or cls.data_dir),
            sso_salts=salts,
            sso_allow_sha1=env.get("AUTHZ_SSO_ALLOW_SHA1", "true").lower()
            not in ("0", "false", "no"),
            sso_max_age=_bounded(
                "AUTHZ_SSO_MAX_AGE",
                _float(env, "AUTHZ_SSO_MAX_AGE", MAX_SSO_PAST_SECONDS),
                MAX_SSO_PAST_SECONDS,
            ),
            sso_max_future=_bounded(
                "AUTHZ_SSO_MAX_FUTURE",
                _float(env, "AUTHZ_SSO_MAX_FUTURE", MAX_SSO_FUTURE_SECONDS),
                MAX_SSO_FUTURE_SECONDS,
            ),
            session_ttl=_bounded(
                "AUTHZ_SESSION_TTL", _float(env, "AUTHZ_SESSION_TTL", 8 * 3600.0), 7 * 86400.0
            ),
            heroku_api_url=env.get("AUTHZ_HEROKU_API_URL") or cls.heroku_api_url,
            heroku_id_url=env.get("AUTHZ_HEROKU_ID_URL") or cls.heroku_id_url,
            heroku_client_secret=_read_secret(env, "AUTHZ_HEROKU_CLIENT_SECRET"),
            token_key=_read_secret(env, "AUTHZ_TOKEN_KEY"),
            access_ttl=_bounded(
                "AUTHZ_ACCESS_TTL", _float(env, "AUTHZ_ACCESS_TTL", 60.0), MAX_ACCESS_TTL
            ),
            facts_deadline=_bounded(
                "AUTHZ_FACTS_DEADLINE", _float(env, "AUTHZ_FACTS_DEADLINE", 2.0), 30.0
            ),
            audit_mode=audit_mode,
        )
