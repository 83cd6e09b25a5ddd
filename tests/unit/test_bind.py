"""Binding the control API's and the receiver's sockets: errors name the setting to change."""

from __future__ import annotations

import socket

import pytest

from campaignd.errors import ConfigError, StartupError
from campaignd.web.server import bind_socket


def test_a_host_that_does_not_resolve_names_the_host_setting() -> None:
    with pytest.raises(ConfigError) as info:
        bind_socket("999.1.1.1", 0)
    text = str(info.value)
    assert "http.host '999.1.1.1' does not resolve to an address" in text
    assert "CAMPAIGND_HTTP__HOST" in text and "port" not in text.split(";", 1)[1]
    with pytest.raises(ConfigError, match=r"receiver\.host .* CAMPAIGND_RECEIVER__HOST"):
        bind_socket("no-such-host.invalid", 0, key="receiver.port")


def test_an_address_of_another_machine_names_the_host_setting() -> None:
    with pytest.raises(StartupError, match=r"http\.host '192\.0\.2\.1' is not an address of "
                                           r"this machine"):
        bind_socket("192.0.2.1", 0)  # TEST-NET-1: never local


def test_a_taken_port_still_names_the_port_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=r"another process may hold the port\. Set "
                                               r"receiver\.port .*CAMPAIGND_RECEIVER__PORT"):
            bind_socket("127.0.0.1", port, key="receiver.port")
