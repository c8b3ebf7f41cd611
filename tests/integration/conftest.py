"""Fixtures several integration modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.upstreams import Upstream


@pytest.fixture(scope="module")
def cvm() -> Iterator[Upstream]:
    """A CVM target process: answers "/" with its name, "cvm"."""
    with Upstream("cvm") as upstream:
        yield upstream


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throw-away certificate authority for the module's TLS peers."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ca`` as a PEM file, for the proxy's ``ca_file`` settings."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
