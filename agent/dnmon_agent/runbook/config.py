"""Which API to call and with which key: flags, the environment, or a named profile.

Each of the URL and the token is taken from the first of: its flag (``--url``, ``--token``); the
profile named by ``--profile``; the environment (``DNMON_URL``, ``DNMON_TOKEN``); the profile named
by ``DNMON_PROFILE`` or the file's ``default``; and, for the URL only, ``dnmon up``'s address.
The profile file is ``$XDG_CONFIG_HOME/dnmon/config.toml`` (``~/.config/dnmon/config.toml``)::

    default = "prod"

    [profiles.prod]
    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"
    token_file = "~/.config/dnmon/prod.token"   # or token_env = "PROD_DNMON_TOKEN", or token = "..."

    [profiles.local]
    url = "http://127.0.0.1:52323"

A token is a credential: it is never printed, logged or put in an error message.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExitCode, RunbookError

DEFAULT_URL = "http://127.0.0.1:52323"


@dataclass(frozen=True)
class ApiConfig:
    url: str
    token: str | None = None

    def __repr__(self) -> str:  # never show the token, even in a debugger or a log line
        return f"ApiConfig(url={self.url!r}, token={'<set>' if self.token else None})"


def config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "dnmon" / "config.toml"


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RunbookError(f"cannot read {path}: {exc}", ExitCode.USAGE) from exc


def _profile(document: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    profiles = document.get("profiles") or {}
    found = profiles.get(name) if isinstance(profiles, dict) else None
    if not isinstance(found, dict):
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else ""
        raise RunbookError(f"no profile {name!r} in {path} (profiles: {known or 'none'})", ExitCode.USAGE)
    return found


def _profile_token(profile: Mapping[str, Any], env: Mapping[str, str], path: Path) -> str | None:
    if profile.get("token_env"):
        return env.get(str(profile["token_env"])) or None
    if profile.get("token_file"):
        token_file = Path(str(profile["token_file"])).expanduser()
        try:
            return token_file.read_text().strip() or None
        except OSError as exc:
            message = f"cannot read token_file {token_file}: {exc.strerror}"
            raise RunbookError(message, ExitCode.USAGE) from exc
    if profile.get("token"):
        if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            print(f"dnmon: warning: {path} holds a token and others can read it (chmod 600)", file=sys.stderr)
        return str(profile["token"])
    return None


def resolve(
    *, url: str | None, token: str | None, profile: str | None, env: Mapping[str, str] = os.environ
) -> ApiConfig:
    path = config_path(env)
    document = _load(path)
    explicit = _profile(document, profile, path) if profile else {}
    fallback_name = env.get("DNMON_PROFILE") or document.get("default")
    fallback = _profile(document, str(fallback_name), path) if fallback_name and not profile else {}
    chosen_url = url or explicit.get("url") or env.get("DNMON_URL") or fallback.get("url") or DEFAULT_URL
    chosen_token = (
        token
        or (_profile_token(explicit, env, path) if explicit else None)
        or env.get("DNMON_TOKEN")
        or (_profile_token(fallback, env, path) if fallback else None)
    )
    return ApiConfig(str(chosen_url).rstrip("/"), chosen_token or None)
