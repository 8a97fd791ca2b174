"""A real S3 server for tests: moto in server mode, HTTP on loopback only.

Load it from a test module with `pytest_plugins = ["s3_server"]` (the tests folder is on `sys.path`
because it has a `conftest.py` and no `__init__.py`). It provides:

- `s3_server` (session): starts the server once, points every AWS client at it through the
  environment (dummy credentials, `AWS_ENDPOINT_URL_S3`), creates `S3_BUCKET`, yields the endpoint.
- `s3_url` (function): a fresh, empty `s3://` directory for one test.
"""

from __future__ import annotations

import logging
import os
import uuid

import pytest

S3_BUCKET = "keras-ckpt-test"

# Only the variables that point clients at the test server; a developer's real configuration
# (profiles, config files, session tokens) must not leak in, and nothing must reach real AWS.
_ENV_REMOVED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL")


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server on 127.0.0.1, with the environment pointing at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in _ENV_REMOVED:
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "keras-ckpt-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "keras-ckpt-test")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(S3_BUCKET)
        try:
            yield endpoint
        finally:
            # Cached s3fs instances hold clients for this endpoint; later sessions start clean.
            fsspec.filesystem("s3").clear_instance_cache()
            server.stop()


@pytest.fixture
def s3_url(s3_server) -> str:
    """A fresh, empty directory URL in the test bucket."""
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:12]}/run"
