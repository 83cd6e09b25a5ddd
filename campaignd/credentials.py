"""The control API's bearer token and the secret files' permissions (checked at start)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from campaignd import logs as logmod
from campaignd.errors import ConfigError
from campaignd.settings import Settings

log = logmod.get_logger("campaignd.daemon")


def token_path(settings: Settings) -> Path:
    return settings.state_dir / "api-token"


def load_or_create_token(settings: Settings) -> str:
    """The bearer token for mutating calls: from settings, else a generated one kept (0600) in
    the state directory so that the CLI on the same host can use it. A kept one that other
    users may read or write is ``ConfigError``: it may not be secret any more."""
    if settings.http.api_token is not None:
        return settings.http.api_token.get_secret_value()
    path = token_path(settings)
    if path.exists():
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigError(
                    f"the API token file is open to other users (mode {mode:04o}, not 0600)",
                    field="state_dir", value=str(path),
                    fix=f"delete it to have a new token generated at start (or, if no one else "
                        f"can have read it, `chmod 600 {path}`)")
            return kept
        path.unlink()  # (an empty file -- a full disk when it was written -- is no token)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def warn_about_secret_files(settings: Settings) -> list[str]:
    """Log a warning for each configured secret file (``*_password_file``, ``*token_file``)
    that every user of the host may read or write; returns the warnings. (Not refused: a file
    readable by its service's group is a common set-up, and the value is read already.)"""
    files = [("database.password_file", settings.database.password_file),
             ("redis.password_file", settings.redis.password_file),
             ("dsp.beeswax.password_file", settings.dsp.beeswax.password_file),
             ("http.api_token_file", settings.http.api_token_file),
             ("receiver.token_file", settings.receiver.token_file)]
    warnings = []
    for key, path in files:
        try:
            mode = path.stat().st_mode & 0o777 if path is not None else 0
        except OSError:
            continue
        if mode & 0o007:
            warnings.append(f"{key} {path} is open to every user of this host (mode "
                            f"{mode:04o}): run `chmod 600 {path}` (or 640 for a group of its "
                            "own) and change the secret if others may have read it")
            log.warning("secret file open to every user", key=key, path=str(path),
                        mode=f"{mode:04o}", fix=f"chmod 600 {path}")
    return warnings


__all__ = ["load_or_create_token", "token_path", "warn_about_secret_files"]
