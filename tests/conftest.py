from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import LocalStack, provider


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    s = provider()
    try:
        yield s
    finally:
        s.close()
