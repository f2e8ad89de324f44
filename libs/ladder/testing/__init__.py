"""What the tests share: waiting on a condition with a deadline, in-memory fakes of the
pieces a unit test cannot run, and the processes of an integration stack.

Lives in the package (not under tests/) so that a test imports it by one name and a
new backend or service can reuse it for its own tests.
"""

from ladder.testing.fakes import (
    FakeApp,
    FakeChangelog,
    FakeDraws,
    FakeEvent,
    FakeTable,
    FakeTopic,
    RpcStatus,
    fake_event,
)
from ladder.testing.processes import (
    ServiceGroup,
    ServiceProcess,
    embedded_infra,
)
from ladder.testing.waiting import unless_not_found, wait_for, wait_for_found

__all__ = [
    "FakeApp",
    "FakeChangelog",
    "FakeDraws",
    "FakeEvent",
    "FakeTable",
    "FakeTopic",
    "RpcStatus",
    "ServiceGroup",
    "ServiceProcess",
    "embedded_infra",
    "fake_event",
    "unless_not_found",
    "wait_for",
    "wait_for_found",
]
