"""Reading the TOML files users write (settings, campaign specs, scenarios) with errors that
say which file, what is wrong and how to fix it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from campaignd.errors import BadInput, SpecError


def read_toml(path: str | Path, *, field: str, kind: str,
              error: type[BadInput] = SpecError) -> dict[str, Any]:
    """Decode ``path``; raise ``error`` naming ``field`` (e.g. ``SPEC``) when the file is
    missing or unreadable, and the file itself when its TOML is invalid."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise error("file not found", field=field, value=str(p),
                    fix=f"give the path of {kind}") from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", field=field, value=str(p),
                    fix=f"give the path of {kind}, readable by this user") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise error("is not valid TOML: nested too deeply", field=str(p),
                    fix="a campaignd file nests a few tables deep at most") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"is not valid TOML: {exc}", field=str(p),
                    fix="fix the TOML syntax at the line and column shown") from None
