"""Who may use a served model: the API key, the name it is served under, the address it binds.

The key never sits in a config, a command line or a log: settings name the environment variable
that holds it (``api_key_env``), the key is read from the environment when the server starts,
and the front keeps only its SHA-256 digest, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re

ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # upper case: a mixed-case value is likely a key
SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
DEFAULT_SERVED_NAME = "rtune-student"  # KServe's default InferenceService name: one name anywhere
DEFAULT_ALIAS = "default"  # as in the teacher config: "the one model this server serves"


def check_env_name(setting: str, name: str) -> None:
    """``name`` must look like an environment variable's name. The value is never echoed: a
    pasted key is the likely mistake."""
    if name and not ENV_NAME.fullmatch(name):
        raise ValueError(
            f"{setting} must be the upper-case NAME of an environment variable holding the key "
            "(e.g. RTUNE_SERVE_API_KEY), not the key itself"
        )


def check_served_name(setting: str, name: str) -> None:
    if name and not SERVED_NAME.fullmatch(name):
        raise ValueError(
            f"{setting} {name!r} must be 1-128 characters of letters, digits and . _ : / -, "
            "starting with a letter or digit (clients send it as the request's model)"
        )


class MissingApiKey(RuntimeError):
    """``api_key_env`` names a variable that is not set."""


def api_key_from_env(env_name: str, setting: str = "api_key_env") -> str:
    """The key held by ``env_name`` ("" when no variable is named); unset or empty is an error,
    not a server silently left open."""
    if not env_name:
        return ""
    check_env_name(setting, env_name)
    key = os.environ.get(env_name, "")
    if not key:
        raise MissingApiKey(
            f"{setting} is {env_name}, but the environment variable {env_name} is not set or "
            f"empty: export {env_name}=<the key clients will send>, or leave {setting} empty to "
            "serve without a key"
        )
    return key


class KeyCheck:
    """Compares a presented bearer token with the key, in constant time, holding only the key's
    SHA-256 (equal-length digests: neither the key nor its length leaks through timing)."""

    def __init__(self, key: str) -> None:
        self._digest = hashlib.sha256(key.encode()).digest()

    def __repr__(self) -> str:
        return "KeyCheck(<redacted>)"

    def allows(self, authorization: str) -> bool:
        """``authorization`` is the request's ``Authorization`` header (``Bearer <key>``)."""
        scheme, _, token = authorization.strip().partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest()
        return hmac.compare_digest(presented, self._digest) and scheme.lower() == "bearer"


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; a wildcard or any other address is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it resolves to who knows what


def exposure_warning(host: str, api_key_env: str) -> str:
    """The warning to print when the API is reachable from other machines without a key."""
    if api_key_env or is_loopback(host):
        return ""
    return (
        f"warning: serving on {host} without an API key: anyone who can reach this address can "
        "use the model. Set a key with --api-key-env NAME (the variable holding it), or bind "
        "127.0.0.1."
    )
