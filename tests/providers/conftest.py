"""The provider tests store into real backends too: moto's S3 server from `tests.s3_fixtures`."""

from tests.s3_fixtures import make_s3, moto_endpoint, raw_s3

# Imported fixtures serve this directory (a `pytest_plugins` here would break `pytest tests`:
# pytest only accepts it in the rootdir's conftest).
__all__ = ["make_s3", "moto_endpoint", "raw_s3"]
