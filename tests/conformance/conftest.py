from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .engines import KITS, EngineKit


@pytest.fixture(params=sorted(KITS))
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EngineKit]:
    made = KITS[request.param](tmp_path)
    if made.setup is not None:
        await made.setup()
    yield made
    await made.close_all()
    if made.teardown is not None:
        await made.teardown()
