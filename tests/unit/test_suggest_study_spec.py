"""The suggest servicer holds one StudySpec per study: built when the study is
created here or first read from Redis, and what every suggestion reads."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from ladder import study as study_model
from ladder.config import Settings, Topics
from ladder.errors import NotFound
from ladder.v1 import space_pb2 as S
from ladder.v1 import study_pb2, suggest_pb2

from services.suggest.service import SuggestServicer


def config(**kw: Any) -> study_pb2.StudyConfig:
    return study_pb2.StudyConfig(
        metric="loss",
        space=S.SearchSpace(parameters=[S.Parameter(name="x", float_range=S.FloatRange(high=1))]),
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
        **kw,
    )


class Studies:
    def __init__(self) -> None:
        self.stored: dict[str, study_pb2.Study] = {}
        self.reads = 0

    def create(self, study: study_pb2.Study) -> tuple[study_pb2.Study, bool]:
        if study.study_id in self.stored:
            return self.stored[study.study_id], False
        self.stored[study.study_id] = study
        return study, True

    def get(self, study_id: str) -> study_pb2.Study | None:
        self.reads += 1
        return self.stored.get(study_id)


@pytest.fixture
def servicer() -> SuggestServicer:
    state = SimpleNamespace(studies=Studies(), trials=SimpleNamespace())
    producer = SimpleNamespace(send=lambda *a, **kw: None)
    settings = Settings(kafka_bootstrap="", redis_url="", topics=Topics("t."))
    return SuggestServicer(settings, state, producer, 60.0)  # type: ignore[arg-type]


def test_a_created_study_keeps_the_spec_it_was_validated_with(
    servicer: SuggestServicer, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = suggest_pb2.CreateStudyRequest(study_id="st-a", config=config(seed=9, partitions=3))
    servicer.CreateStudy(request, None)  # type: ignore[arg-type]
    built: list[object] = []
    real = study_model.StudySpec.from_proto
    monkeypatch.setattr(
        study_model.StudySpec, "from_proto", lambda c: built.append(c) or real(c)
    )
    spec = servicer._spec("st-a")
    assert (spec.seed, spec.partitions, spec.algorithm) == (9, 3, study_model.Algorithm.RANDOM)
    assert servicer._spec("st-a") is spec
    assert built == [] and servicer.state.studies.reads == 0


def test_a_stored_study_is_read_and_modelled_once(servicer: SuggestServicer) -> None:
    stored = study_pb2.Study(study_id="st-b", config=config(seed=4, max_trials=7))
    servicer.state.studies.stored["st-b"] = stored
    spec = servicer._spec("st-b")
    assert (spec.seed, spec.max_trials, spec.partitions) == (4, 7, 1)
    assert servicer._spec("st-b") is spec and servicer.state.studies.reads == 1
    with pytest.raises(NotFound, match="study 'st-c' not found"):
        servicer._spec("st-c")
