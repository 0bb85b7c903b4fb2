"""Parsing `--metrics-addr`: where the metrics endpoint listens.

Tracing data says which processes run on a host and how they use memory: the endpoint binds
loopback unless the user names a host, so exposing it is always a deliberate choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from cowtrace.errors import CowtraceError

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int  # 0: any free port (the bound one is printed)

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}/metrics"


def parse_listen_address(text: str) -> ListenAddress:
    """`PORT`, `:PORT`, `HOST:PORT` or `[IPV6]:PORT`; a bare port binds 127.0.0.1."""
    value = text.strip()
    host, port_text = DEFAULT_HOST, value
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise CowtraceError(f"invalid --metrics-addr {text!r}: expected [HOST]:PORT")
        host, port_text = value[1:end], value[end + 2 :]
    elif ":" in value:
        head, _, port_text = value.rpartition(":")
        if ":" in head:
            raise CowtraceError(f"invalid --metrics-addr {text!r}: write IPv6 hosts as [HOST]:PORT")
        host = head or DEFAULT_HOST
    if not port_text.isdigit() or int(port_text) > 65535:
        raise CowtraceError(f"invalid --metrics-addr {text!r}: the port must be 0-65535")
    if not host:
        raise CowtraceError(f"invalid --metrics-addr {text!r}: empty host")
    return ListenAddress(host, int(port_text))
