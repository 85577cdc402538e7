"""The collector tuning every service applies at start-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mailsync.service import tune_gc
from mailsync.settings import ServiceSettings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_gen0_threshold_from_settings_and_startup_objects_frozen() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(ServiceSettings(gc_gen0_threshold=12_345))
    assert gc.get_threshold() == (12_345, 10, 10)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_gc")
def test_zero_keeps_pythons_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(ServiceSettings(gc_gen0_threshold=0))
    assert gc.get_threshold() == (700, 10, 10)
