"""No wasted evaluations: the rule every sampler keeps on finite and discrete spaces.

A configuration is *taken* once a trial has evaluated it or is evaluating it:

* every observation of it (a final value, a rung value of a trial stopped early, an
  infeasible failure: ``Observation.infeasible``);
* every pending point (running trials, points handed out, points waiting in a ready
  buffer: ``policy.SuggestionPolicy`` passes them as pending).

No sampler proposes a taken configuration, nor the same one twice in one batch, until
the space is *exhausted*: as many distinct configurations taken as the space has
(``space_size``). A sampler that meets a taken candidate takes its next-best one by its
own criterion (TPE: the next candidate by ``log l - log g``; GP: the next candidate by
the acquisition, then the best of the discrete neighbours and of unseen configurations;
quasi-random: the unseen configuration farthest from the taken ones), never drops it.
Once the space is exhausted the rule is off and each sampler proposes what it prefers,
repeats included (TPE and GP then re-evaluate where they expect the best values, which on
a noisy objective is a confirmation of the finalists).

Configurations are compared by ``config_key``: exact for categorical, ordinal and int
values, the float itself for a float. On a space where every configuration has a float
(``repeatable`` is false) the rule is off: two suggestions are the same configuration
only with equal floats, which the samplers' continuous draws make a measure-zero event,
and checking would cost a pass over every observation per call (near-repeats there are
the GP's ``MIN_DISTANCE``).

A failure that is a bug in the training code (``USER_ERROR``, outside
``INFEASIBLE_KINDS``) does not take its configuration: nothing was learnt about it, and
after the fix it may run.

A study that wants repeats (e.g. to confirm finalists over seeds) sets
``SamplerContext.repeats``: then nothing is taken.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ladder.params import PlainValue
from ladder.samplers.base import Observation
from ladder.space import Kind, ParamSpec, Space

# A hashable identity of a configuration: (parameter index, exact value) pairs.
ConfigKey = tuple[tuple[int, PlainValue], ...]
# Spaces with at most this many configurations are enumerated to find unseen ones;
# larger ones are sampled (uniformly, rejecting taken configurations).
ENUMERATE_LIMIT = 4096
# Uniform draws per wanted unseen configuration before giving up on a crowded space.
REJECTION_TRIES = 20


def config_key(space: Space, params: Mapping[str, PlainValue]) -> ConfigKey:
    """The identity of ``params`` as a configuration of ``space`` (module docstring)."""
    key: list[tuple[int, PlainValue]] = []
    for j, p in enumerate(space.params):
        if p.name not in params:
            continue  # an inactive child
        value = params[p.name]
        if p.kind is Kind.CATEGORICAL:
            key.append((j, str(value)))
        elif p.kind is Kind.ORDINAL:
            index = p.index_of(value)
            key.append((j, index if index is not None else float(value)))  # type: ignore[arg-type]
        elif p.kind is Kind.INT:
            key.append((j, round(float(value))))  # type: ignore[arg-type]
        else:
            key.append((j, float(value)))  # type: ignore[arg-type]
    return tuple(key)


def _count(space: Space, float_size: float) -> float:
    """Configurations of ``space`` with each float counted as ``float_size`` values."""
    children: dict[str, list[ParamSpec]] = {}
    for p in space.params:
        if p.parent is not None:
            children.setdefault(p.parent, []).append(p)

    def subtree(p: ParamSpec) -> float:
        if p.kind is Kind.FLOAT:
            return float_size
        if p.kind is Kind.INT:
            return math.floor(p.high) - math.ceil(p.low) + 1
        return sum(
            math.prod(subtree(c) for c in children.get(p.name, ()) if i in c.parent_indexes)
            for i in range(len(p.values))
        )

    return math.prod(subtree(p) for p in space.params if p.parent is None)


def space_size(space: Space) -> float:
    """How many distinct configurations ``space`` has (an int as a float when finite:
    conditional children count only under their parent's values), ``math.inf`` when
    a float parameter can be active."""
    return _count(space, math.inf)


def repeatable(space: Space) -> bool:
    """Whether two suggestions can be the same configuration short of equal floats:
    some configuration of the space has no active float."""
    return _count(space, 0) > 0


def parents_first(space: Space) -> list[ParamSpec]:
    """The parameters, each after its parent."""
    done: list[ParamSpec] = []
    names: set[str] = set()
    remaining = list(space.params)
    while remaining:
        for p in list(remaining):
            if p.parent is None or p.parent in names:
                done.append(p)
                names.add(p.name)
                remaining.remove(p)
    return done


def configurations(space: Space) -> list[dict[str, PlainValue]]:
    """Every configuration of a finite space (inactive children omitted), in the
    space's order; raises ValueError for a space with a float parameter."""
    partial: list[dict[str, PlainValue]] = [{}]
    for p in parents_first(space):
        if p.kind is Kind.FLOAT:
            raise ValueError(f"{p.name!r} is a float: the space is not finite")
        domain: Sequence[PlainValue] = (
            range(math.ceil(p.low), math.floor(p.high) + 1) if p.kind is Kind.INT else p.values
        )
        grown: list[dict[str, PlainValue]] = []
        for config in partial:
            if space.is_active(p.name, config):
                grown.extend({**config, p.name: value} for value in domain)
            else:
                grown.append(config)
        partial = grown
    return [{name: c[name] for name in space.names if name in c} for c in partial]


class Taken:
    """The taken configurations of a suggest call (module docstring)."""

    def __init__(self, space: Space, repeats: bool = False) -> None:
        self.space = space
        self.size = space_size(space)
        # Off when the study wants repeats or the space cannot repeat (module docstring).
        self.active = not repeats and repeatable(space)
        self._points: dict[ConfigKey, Mapping[str, PlainValue]] = {}

    @classmethod
    def of(
        cls,
        space: Space,
        observations: Iterable[Observation],
        pending: Iterable[Mapping[str, PlainValue]],
        repeats: bool = False,
    ) -> Taken:
        """What ``observations`` and ``pending`` take (failures that are bugs do not)."""
        taken = cls(space, repeats)
        if taken.active:
            for obs in observations:
                if not obs.failed or obs.infeasible:
                    taken.add(obs.params)
            for params in pending:
                taken.add(params)
        return taken

    def copy(self) -> Taken:
        other = Taken.__new__(Taken)
        other.space, other.size, other.active = self.space, self.size, self.active
        other._points = dict(self._points)
        return other

    def add(self, params: Mapping[str, PlainValue]) -> None:
        if self.active:
            self._points.setdefault(config_key(self.space, params), params)

    def __len__(self) -> int:
        return len(self._points)

    def __contains__(self, params: Mapping[str, PlainValue]) -> bool:
        return config_key(self.space, params) in self._points

    @property
    def exhausted(self) -> bool:
        return len(self._points) >= self.size

    def blocks(self, params: Mapping[str, PlainValue]) -> bool:
        """Whether proposing ``params`` would waste an evaluation: it is taken and the
        space still has a configuration that is not (and the rule is on)."""
        return self.active and not self.exhausted and params in self

    def points(self) -> list[Mapping[str, PlainValue]]:
        """One params mapping per taken configuration."""
        return list(self._points.values())


def unseen(
    space: Space, taken: Taken, rng: np.random.Generator, limit: int
) -> list[dict[str, PlainValue]]:
    """Up to ``limit`` distinct configurations that are not taken, uniformly at random
    among those: every one of a space of at most ``ENUMERATE_LIMIT`` configurations is
    considered; a larger space is sampled, giving up after ``REJECTION_TRIES * limit``
    draws (so fewer may come back when nearly every configuration is taken)."""
    if taken.size <= ENUMERATE_LIMIT:
        free = [c for c in configurations(space) if c not in taken]
        return [free[i] for i in rng.permutation(len(free))[:limit]]
    found: dict[ConfigKey, dict[str, PlainValue]] = {}
    for _ in range(REJECTION_TRIES):
        for unit in rng.random((limit, space.dim())):
            params = space.sample_to_params(unit)
            key = config_key(space, params)
            if key not in found and params not in taken:
                found[key] = params
                if len(found) == limit:
                    return list(found.values())
    return list(found.values())


def farthest(space: Space, candidates: Sequence[Mapping[str, PlainValue]], taken: Taken) -> int:
    """Index of the candidate farthest (unit cube, ``INDEX`` encoding) from every taken
    configuration: the space-filling choice among unseen ones."""
    if not len(taken):
        return 0
    others = np.stack([space.params_to_unit(p) for p in taken.points()])
    points = np.stack([space.params_to_unit(p) for p in candidates])
    gaps = np.linalg.norm(points[:, None, :] - others[None, :, :], axis=2).min(axis=1)
    return int(np.argmax(gaps))
