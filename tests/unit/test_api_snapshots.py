"""What ``trial.checkpoint`` writes and ``trial.restore`` reads (``ladder.api.snapshots``)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from ladder.api import snapshots
from torch import nn


def test_a_model_its_optimizer_and_the_random_streams_come_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    shuffle = torch.Generator().manual_seed(7)
    snapshots.write([model, opt, shuffle], tmp_path / "c.ckpt")
    expected = (torch.randn(2), random.random(), torch.randperm(5, generator=shuffle))

    torch.manual_seed(1)
    other, other_shuffle = nn.Linear(4, 2), torch.Generator().manual_seed(99)
    other_opt = torch.optim.Adam(other.parameters(), lr=0.1)
    snapshots.read(tmp_path / "c.ckpt", [other, other_opt, other_shuffle])
    assert torch.equal(other.weight, model.weight)
    assert other_opt.state_dict()["state"][0]["step"] == 1
    # Every stream draws what it would have drawn after the save.
    assert torch.equal(torch.randn(2), expected[0])
    assert random.random() == expected[1]
    assert torch.equal(torch.randperm(5, generator=other_shuffle), expected[2])


def test_plain_containers_and_objects_are_restored_in_place(tmp_path: Path) -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

    counter, state, history = Counter(), {"epoch": 3}, [1.0, 0.5]
    counter.n = 5
    snapshots.write([counter, state, history], tmp_path / "c.ckpt")
    fresh, fresh_state, fresh_history = Counter(), {"stale": True}, []
    snapshots.read(tmp_path / "c.ckpt", [fresh, fresh_state, fresh_history])
    assert (fresh.n, fresh_state, fresh_history) == (5, {"epoch": 3}, [1.0, 0.5])


@pytest.mark.parametrize("folder", [False, True])
def test_a_path_is_written_back_where_it_was(tmp_path: Path, folder: bool) -> None:
    target = tmp_path / "run" / ("out" if folder else "weights.bin")
    if folder:
        (target / "deep").mkdir(parents=True)
        (target / "deep" / "w.bin").write_bytes(b"abc")
    else:
        target.parent.mkdir()
        target.write_bytes(b"abc")
    snapshots.write([str(target)], tmp_path / "c.ckpt")
    if folder:
        (target / "deep" / "w.bin").write_bytes(b"changed")
        (target / "extra").write_text("left over")
    else:
        target.write_bytes(b"changed")
    snapshots.read(tmp_path / "c.ckpt", [target])
    if folder:
        assert (target / "deep" / "w.bin").read_bytes() == b"abc"
        assert not (target / "extra").exists()
    else:
        assert target.read_bytes() == b"abc"


def test_what_cannot_be_restored_is_refused(tmp_path: Path) -> None:
    snapshots.write([{"a": 1}], tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="holds 1 objects, restore was given 2"):
        snapshots.read(tmp_path / "c.ckpt", [{}, {}])
    with pytest.raises(ValueError, match="nothing to checkpoint"):
        snapshots.write([], tmp_path / "d.ckpt")
    (tmp_path / "e.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - any unpickling error
        snapshots.read(tmp_path / "e.ckpt", [{}])
