"""What the tests share: waiting on a condition with a deadline, in-memory fakes of the
pieces a unit test cannot run, the processes of an integration stack, the services'
raw gRPC stubs, and reading the stack's topics.

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
    own_topics,
)
from ladder.testing.stubs import Clients, code_and_message
from ladder.testing.topics import (
    TopicReader,
    decoded,
    decoded_records,
    read_topic,
    signed_headers,
    trial_events,
)
from ladder.testing.waiting import unless_not_found, wait_for, wait_for_found

__all__ = [
    "Clients",
    "FakeApp",
    "FakeChangelog",
    "FakeDraws",
    "FakeEvent",
    "FakeTable",
    "FakeTopic",
    "RpcStatus",
    "ServiceGroup",
    "ServiceProcess",
    "TopicReader",
    "code_and_message",
    "decoded",
    "decoded_records",
    "embedded_infra",
    "fake_event",
    "own_topics",
    "read_topic",
    "signed_headers",
    "trial_events",
    "unless_not_found",
    "wait_for",
    "wait_for_found",
]
