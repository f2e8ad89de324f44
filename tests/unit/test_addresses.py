"""Replica address lists as gRPC targets (``ladder.addresses``)."""

from __future__ import annotations

import pytest
from ladder import addresses


def test_one_address_is_its_own_target() -> None:
    assert addresses.target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert addresses.target("suggest-headless:50051") == "suggest-headless:50051"


def test_a_list_becomes_an_ipv4_target_with_names_resolved() -> None:
    assert addresses.target("127.0.0.1:1, localhost:2,") == "ipv4:127.0.0.1:1,127.0.0.1:2"


def test_a_grpc_target_is_left_alone() -> None:
    for given in ("ipv4:127.0.0.1:1,127.0.0.1:2", "dns:///suggest:50051"):
        assert addresses.target(given) == given


def test_an_entry_without_a_port_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        addresses.target("127.0.0.1:1,127.0.0.1")


def test_balanced_channels_round_robin_and_probes_use_the_first() -> None:
    assert ("grpc.lb_policy_name", "round_robin") in addresses.channel_options([("a", 1)])
    assert addresses.first(" h1:1 ,h2:2") == "h1:1"
