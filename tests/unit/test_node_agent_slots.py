"""The node agent's own bookkeeping: what it offers RequestWork, its slots, the
workload a study runs (the agent on the real stack: tests/integration/test_node_agent.py)."""

from __future__ import annotations

import pytest
from ladder.errors import InvalidArgument
from ladder.scheduling.resources import Resources

from workers.agent import NodeSpec, Slots, node_offer, workload_name


def test_offer_carries_capacity_free_and_tier() -> None:
    spec = NodeSpec("n1", gpus=8, gpu_type="a100", cpu=64, memory_gb=512, spot=True)
    offer = node_offer(spec, Resources(3, 20.0, 100.0), max_trials=4)
    assert (offer.node_id, offer.spot, offer.max_trials) == ("n1", True, 4)
    assert (offer.capacity.gpus, offer.capacity.cpu, offer.capacity.memory_gb) == (8, 64, 512)
    assert (offer.free.gpus, offer.free.cpu, offer.free.memory_gb) == (3, 20, 100)
    assert offer.free.gpu_type == offer.capacity.gpu_type == "a100"


def test_offer_never_advertises_negative_room() -> None:
    spec = NodeSpec("n1", gpus=2, cpu=4, memory_gb=8)
    offer = node_offer(spec, Resources(-1, -0.5, 2.0), max_trials=8)
    assert (offer.free.gpus, offer.free.cpu, offer.free.memory_gb) == (0, 0, 2)


def test_slots_hold_until_released() -> None:
    slots = Slots(Resources(8, 64.0, 512.0))
    assert slots.take("a", Resources(4, 8.0, 64.0))
    assert slots.take("b", Resources(2, 8.0, 64.0))
    assert slots.free == Resources(2, 48.0, 384.0)
    assert not slots.take("c", Resources(4, 8.0, 64.0))  # more than is free: flagged
    assert slots.release("a") == Resources(4, 8.0, 64.0)
    assert slots.release("a") == Resources()  # twice: nothing more
    slots.release("b")
    slots.release("c")
    assert slots.free == Resources(8, 64.0, 512.0) and slots.held == {}


def test_bad_node_is_refused_with_the_field() -> None:
    with pytest.raises(InvalidArgument, match="node.gpus"):
        _ = NodeSpec("n1", gpus=-1).capacity
    with pytest.raises(InvalidArgument, match="node_id"):
        _ = NodeSpec("", gpus=1).capacity


def test_workload_from_the_study_label_else_the_agent_default() -> None:
    assert workload_name({"workload": "digits"}, "synthetic") == "digits"
    assert workload_name({"team": "x"}, "synthetic") == "synthetic"
    assert workload_name({"workload": ""}, "mod:Cls") == "mod:Cls"
