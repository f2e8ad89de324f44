"""RequestWork's reading of a node agent's offer (services.suggest.work.offered_node):
validated with the field named, and free space never above what the holds leave."""

from __future__ import annotations

import pytest
from ladder.errors import InvalidArgument
from ladder.scheduling.resources import Resources
from ladder.v1 import study_pb2, suggest_pb2

from services.suggest.work import offered_node


def _offer(free_gpus: int, node_id: str = "n1", max_trials: int = 0) -> suggest_pb2.NodeOffer:
    return suggest_pb2.NodeOffer(
        node_id=node_id, max_trials=max_trials,
        capacity=study_pb2.TrialResources(gpus=8, gpu_type="a100", cpu=64, memory_gb=512),
        free=study_pb2.TrialResources(gpus=free_gpus, cpu=64, memory_gb=512))


def test_free_is_the_smaller_of_the_agents_word_and_what_the_holds_leave() -> None:
    node = offered_node(_offer(8), Resources(3, 10.0, 100.0))
    assert node.free == Resources(5, 54.0, 412.0)  # an assignment not started yet counts
    assert node.gpu_type == "a100" and node.capacity == Resources(8, 64.0, 512.0)
    assert offered_node(_offer(2), Resources(3, 0.0, 0.0)).free.gpus == 2
    assert offered_node(_offer(8), Resources(9, 0.0, 0.0)).free.gpus == 0  # never negative


@pytest.mark.parametrize(("offer", "message"), [
    (_offer(8, node_id=""), "node.node_id is required"),
    (_offer(9), "node.free must lie between 0 and the capacity"),
    (_offer(-1), "node.free.gpus must be >= 0"),
    (_offer(1, max_trials=-1), "node.max_trials must be >= 0"),
])
def test_a_bad_offer_names_the_field(offer: suggest_pb2.NodeOffer, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        offered_node(offer, Resources())
