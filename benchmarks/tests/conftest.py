"""The harness's tests start real nginx servers and real wrk runs (no measurement): both are
installed first when missing (``benchmarks/install.py``, Debian packages), so ``make test``
needs nothing installed by hand."""

from __future__ import annotations

import pytest

from benchmarks import install

#: the programs these tests run
PROGRAMS = ["nginx", "wrk"]


@pytest.fixture(scope="session", autouse=True)
def _programs() -> None:
    status = install.ensure(PROGRAMS, log=lambda _: None)
    failed = {name: state for name, state in status.items() if state.startswith("error")}
    if failed:
        pytest.exit(f"the benchmark harness's tests need {', '.join(failed)}: {failed}",
                    returncode=1)
