"""The load balancer host: Debian's HAProxy in front of the two API hosts, checking each one's
`/readyz` every second (out after 2 failures, back after 2 successes).

Its behaviour is the one we recommend (docs/scaling.md):
- a request whose connection to an API host failed, or that the host closed without an answer
  (it died), is sent again to the other host, but a POST only when it carries an
  `Idempotency-Key` (then the API answers a repeat with the first answer and creates nothing).
  That needs the whole request in HAProxy's buffer (`option http-buffer-request`): without it
  a POST sent on a reused server connection that the dying host resets is not retried, and
  the client's connection is closed without an answer (HAProxy's way of saying "retry");
- when no API host is ready (Postgres or Redis is down for all of them) HAProxy answers
  itself, like the API does: 503, `Retry-After: 5`, code `service_unavailable`.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.chaos.procs import Proc, wait_until
from tests.rehearsal.topology import API_PORT, BALANCER, BALANCER_PORT

UNAVAILABLE = (
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json\r\n"
    "Retry-After: 5\r\n"
    "Cache-Control: no-store\r\n"
    "Connection: close\r\n"
    "\r\n"
    '{"detail": "no API host is ready; retry later", "code": "service_unavailable"}\n'
)


def config(workdir: Path, apis: dict[str, str]) -> str:
    """haproxy.cfg for the API hosts `apis` (name -> address)."""
    servers = "\n".join(
        f"  server {name} {address}:{API_PORT} check" for name, address in apis.items()
    )
    return f"""global
  maxconn 2000
  stats socket {workdir / "haproxy.sock"} mode 600 level admin

defaults
  mode http
  log stdout format raw local0
  option httplog
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout check 2s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response
  errorfile 503 {workdir / "503.http"}

frontend api
  bind {BALANCER}:{BALANCER_PORT}
  default_backend apis

backend apis
  balance roundrobin
  source {BALANCER}
  # A request is retried only if HAProxy holds all of it: wait for the body before sending.
  option http-buffer-request
  http-request disable-l7-retry if METH_POST !{{ req.hdr(idempotency-key) -m found }}
  option httpchk
  http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host {BALANCER}:{BALANCER_PORT}
  http-check expect status 200
  default-server inter 1s fastinter 500ms downinter 1s fall 2 rise 2
{servers}
"""


class Balancer:
    def __init__(self, root: Path, env: dict[str, str], apis: dict[str, str]) -> None:
        self.workdir = root / "balancer"
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "503.http").write_text(UNAVAILABLE)
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(config(self.workdir, apis))
        cmd = ["haproxy", "-f", str(cfg), "-db"]
        self.proc = Proc("haproxy", cmd, env, self.workdir, root / "logs" / "haproxy.log")
        self.url = f"http://{BALANCER}:{BALANCER_PORT}"

    def start(self) -> None:
        self.proc.start()
        wait_until(self._listens, 15, "HAProxy", self.proc)

    def _listens(self) -> bool:
        with socket.create_connection((BALANCER, BALANCER_PORT), timeout=1):
            return True

    def states(self) -> dict[str, str]:
        """Each API host's state as HAProxy sees it: UP, DOWN, or a transition (`UP 1/2`)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.workdir / "haproxy.sock"))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "apis" and row.get("svname") not in ("BACKEND", None):
                states[row["svname"]] = row.get("status", "")
        return states

    def wait_state(self, server: str, state: str, timeout: float) -> None:
        wait_until(lambda: self.states().get(server) == state, timeout, f"{server} {state}")
