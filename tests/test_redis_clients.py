"""`mediagen.redis_clients`: the Redis settings are checked at start with messages that say
what is wrong, Celery's broker is configured from the same settings as every other client, and
no module makes a Redis client of its own. (The clients against real servers: Sentinel
failovers, TLS, restarts and half-open connections in tests/redis_failover.)"""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from mediagen import redis_clients
from mediagen.config import Settings
from tests.stack import ROOT

SENTINELS = "10.0.0.1:26379,10.0.0.2:26380"


def settings(**values: str) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["10.0.0.1", "10.0.0.1:port", ":26379", "a b:1", "h:70000",
                                   "10.0.0.1:26379,oops"])
def test_a_sentinel_that_is_not_host_port_is_refused_by_name(given: str) -> None:
    with pytest.raises(ValidationError, match=r"REDIS_SENTINELS: .* is not host:port"):
        settings(redis_url="redis://mymaster/0", redis_sentinels=given)


def test_sentinels_are_parsed() -> None:
    parsed = settings(redis_url="redis://m/0", redis_sentinels=f" {SENTINELS}, [::1]:26379 ")
    assert parsed.redis_sentinel_list == [("10.0.0.1", 26379), ("10.0.0.2", 26380),
                                          ("::1", 26379)]
    assert settings().redis_sentinel_list == []


def test_sentinels_need_redis_url_and_tls_files_need_rediss() -> None:
    with pytest.raises(ValidationError, match="REDIS_SENTINELS needs REDIS_URL"):
        settings(redis_url="", redis_sentinels=SENTINELS)
    with pytest.raises(ValidationError, match="only with a rediss:// REDIS_URL"):
        settings(redis_url="redis://h/0", redis_tls_ca_file="/ca.pem")
    with pytest.raises(ValidationError, match="go together"):
        settings(redis_url="rediss://h/0", redis_tls_cert_file="/c.pem")


def test_the_broker_goes_through_the_sentinels_with_the_url_password_and_database() -> None:
    conf = redis_clients.celery_broker(settings(
        redis_url="redis://:p%40ss@mymaster/3", redis_sentinels=SENTINELS,
        redis_sentinel_master="prod", redis_sentinel_password="sentinel-secret"))
    assert conf["broker_url"] == ("sentinel://:p%40ss@10.0.0.1:26379/3;"
                                  "sentinel://:p%40ss@10.0.0.2:26380/3")
    transport = conf["broker_transport_options"]
    assert transport["master_name"] == "prod"
    assert transport["sentinel_kwargs"]["password"] == "sentinel-secret"
    assert "broker_use_ssl" not in conf


def test_tls_applies_to_the_broker_and_the_clients() -> None:
    tls = settings(redis_url="rediss://h:6380/0", redis_tls_ca_file="/ca.pem",
                   redis_tls_cert_file="/c.pem", redis_tls_key_file="/k.pem")
    conf = redis_clients.celery_broker(tls)
    assert conf["broker_url"] == "rediss://h:6380/0"
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem",
                                      "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}
    client = redis_clients.sync_client(tls, "t")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "/ca.pem" and kwargs["ssl_cert_reqs"] == "required"
    client.close()


def test_no_module_makes_a_redis_client_of_its_own() -> None:
    """Every client comes from mediagen.redis_clients (the embedded server's own admin client
    aside), so Sentinel, TLS and keepalive reach all of them."""
    made = re.compile(r"from_url\(|\bRedis\(|Sentinel\(|broker_url=.*redis_url")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "mediagen").rglob("*.py"))
        if path.name != "redis_clients.py" and "embedded" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if made.search(line)
    ]
    assert found == [], found
