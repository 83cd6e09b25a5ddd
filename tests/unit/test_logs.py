"""Secrets never reach a log line."""

from __future__ import annotations

import io
import json

from campaignd import logs


def test_secret_keys_and_values_are_redacted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    logs.configure("INFO", "json", tmp_path / "x.log", stream=stream)
    logs.register_secrets(["hunter2-secret-pw"])
    log = logs.get_logger("t")
    log.info("login", password="abc", email="a@b.c",
             url="https://u:hunter2-secret-pw@host/", headers={"Authorization": "Bearer x"})
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["password"] == logs.MASK
    assert "hunter2-secret-pw" not in stream.getvalue()
    assert line["headers"]["Authorization"] == logs.MASK
    assert line["email"] == "a@b.c"
    assert "hunter2-secret-pw" not in (tmp_path / "x.log").read_text()
    logs.configure("INFO", "json", stream=io.StringIO())
