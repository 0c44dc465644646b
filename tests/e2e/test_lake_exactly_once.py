"""The lake under crashes: kill -9 of the sink, a DataNode restart, late events and deletes; after
compaction every event is in exactly one file of its event-time hour and deleted statuses are gone.

The same scenario as `fedilake scenario lake`, at a size that fits the suite.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fedilake.lake_scenario import LakeScenario, run_lake_scenario
from fedilake.stack.control import LocalStack

pytestmark = pytest.mark.e2e

log = logging.getLogger(__name__)


def test_every_event_once_in_its_hour_after_kills_and_a_datanode_restart(
    stack: LocalStack, tmp_path: Path
) -> None:
    scenario = LakeScenario(events=6000, kills=4, deleted=40)
    verdict = run_lake_scenario(scenario, tmp_path, log.info, stack)
    assert verdict.kills == scenario.kills
    assert verdict.exact, verdict.summary()
    assert verdict.files_before > verdict.files_after
