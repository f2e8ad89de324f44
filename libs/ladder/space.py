"""Search spaces and study configurations: validation, defaults and encodings.

Pure code (no I/O). ``Space.from_proto`` validates a ``SearchSpace`` and raises
``SpaceError`` whose message names the offending field, e.g.
``parameters[2] 'lr': float_range.low must be < high (got 0.1 >= 0.01)``.

Encoding. Samplers work in the unit hypercube. Every parameter owns one or more
unit coordinates, described by ``Space.columns(encoding)``:

| kind        | ``INDEX`` encoding (1 column)                         | ``ONE_HOT``           |
|-------------|-------------------------------------------------------|-----------------------|
| float       | linear or log interpolation between low and high      | same                  |
| int         | as float over [low-0.5, high+0.5], rounded, clamped   | same                  |
| ordinal     | coordinate split in len(values) equal bins → index    | same                  |
| categorical | coordinate split in len(choices) equal bins → index   | one column per choice |

``INDEX`` is what quasi-random sampling uses (every choice gets the same share of
the unit interval); ``ONE_HOT`` exists for surrogate models (GP, TPE) that must
not pretend categories are ordered. Inactive conditional parameters are omitted
from decoded params; when encoding they get a neutral filler (0.5 / all zeros).

A whole ``StudyConfig`` (space, sampler, scheduler) is read by ``ladder.study``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from ladder.errors import InvalidArgument
from ladder.params import PlainValue
from ladder.v1 import space_pb2


class StudyConfigError(InvalidArgument, ValueError):
    """A StudyConfig that cannot be accepted; the message names the field."""


class SpaceError(StudyConfigError):
    """A SearchSpace (or a params dict checked against it) that is invalid."""


class Kind(StrEnum):
    FLOAT = "float_range"
    INT = "int_range"
    CATEGORICAL = "categorical"
    ORDINAL = "ordinal"


class CategoricalEncoding(StrEnum):
    INDEX = "index"
    ONE_HOT = "one_hot"


@dataclass(frozen=True)
class ParamSpec:
    """One validated parameter. ``values`` holds the categorical choices (str) or
    the ordinal values (int when every value is integral, else float)."""

    name: str
    kind: Kind
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    values: tuple[PlainValue, ...] = ()
    parent: str | None = None
    # Indexes into the parent's ``values`` under which this parameter is active.
    parent_indexes: frozenset[int] = field(default_factory=frozenset)

    @property
    def is_numeric_range(self) -> bool:
        return self.kind in (Kind.FLOAT, Kind.INT)

    def width(self, encoding: CategoricalEncoding) -> int:
        if self.kind is Kind.CATEGORICAL and encoding is CategoricalEncoding.ONE_HOT:
            return len(self.values)
        return 1

    def index_of(self, value: object) -> int | None:
        """Position of ``value`` among the categorical choices / ordinal values."""
        if self.kind is Kind.CATEGORICAL:
            text = str(value)
            return self.values.index(text) if text in self.values else None
        if self.kind is Kind.ORDINAL:
            try:
                number = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
            for i, candidate in enumerate(self.values):
                if float(candidate) == number:
                    return i
            return None
        return None

    def _bounds(self) -> tuple[float, float]:
        """Interpolation interval (log-transformed when log scale)."""
        low, high = self.low, self.high
        if self.kind is Kind.INT:
            # Widen by half a step so every integer gets an equal share.
            # (low - 0.5 stays > 0 on log scale since validation requires low >= 1.)
            low, high = low - 0.5, high + 0.5
        if self.log:
            return math.log(low), math.log(high)
        return low, high

    def decode(self, coords: Sequence[float]) -> PlainValue:
        """Unit coordinates (``width`` of them) → value."""
        if len(coords) > 1:  # one-hot categorical
            return self.values[int(np.argmax(coords))]
        u = min(max(float(coords[0]), 0.0), 1.0)
        if self.kind in (Kind.CATEGORICAL, Kind.ORDINAL):
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        low, high = self._bounds()
        x = low + u * (high - low)
        if self.log:
            x = math.exp(x)
        if self.kind is Kind.INT:
            return int(min(max(round(x), self.low), self.high))
        return min(max(x, self.low), self.high)

    def encode(self, value: PlainValue, encoding: CategoricalEncoding) -> list[float]:
        """Value → unit coordinates (the centre of its bin for discrete kinds)."""
        if self.kind in (Kind.CATEGORICAL, Kind.ORDINAL):
            index = self.index_of(value)
            if index is None:
                raise SpaceError(f"{self.name!r}: {value!r} is not one of {list(self.values)}")
            if self.width(encoding) > 1:
                return [1.0 if i == index else 0.0 for i in range(len(self.values))]
            return [(index + 0.5) / len(self.values)]
        x = float(value)
        low, high = self._bounds()
        if self.log:
            x = math.log(x)
        return [min(max((x - low) / (high - low), 0.0), 1.0)]

    def filler(self, encoding: CategoricalEncoding) -> list[float]:
        return [0.0] * self.width(encoding) if self.width(encoding) > 1 else [0.5]


class Space:
    """A validated search space. Build it with ``Space.from_proto``."""

    def __init__(self, params: Sequence[ParamSpec]) -> None:
        self.params: tuple[ParamSpec, ...] = tuple(params)
        self._by_name = {p.name: p for p in self.params}
        self._order = _topological_order(self.params)

    @classmethod
    def from_proto(cls, space: space_pb2.SearchSpace) -> Space:
        return cls(_validate(space))

    def __len__(self) -> int:
        return len(self.params)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def param(self, name: str) -> ParamSpec:
        return self._by_name[name]

    def dim(self, encoding: CategoricalEncoding = CategoricalEncoding.INDEX) -> int:
        return sum(p.width(encoding) for p in self.params)

    def columns(
        self, encoding: CategoricalEncoding = CategoricalEncoding.INDEX
    ) -> list[tuple[ParamSpec, slice]]:
        """Each parameter with the slice of unit coordinates it owns."""
        out, start = [], 0
        for p in self.params:
            out.append((p, slice(start, start + p.width(encoding))))
            start += p.width(encoding)
        return out

    def sample_to_params(
        self,
        unit: Sequence[float],
        encoding: CategoricalEncoding = CategoricalEncoding.INDEX,
    ) -> dict[str, PlainValue]:
        """Decode a point of the unit cube; inactive conditional children are omitted."""
        vector = np.asarray(unit, dtype=float)
        if vector.shape != (self.dim(encoding),):
            raise ValueError(f"expected {self.dim(encoding)} coordinates, got {vector.shape}")
        slices = {p.name: s for p, s in self.columns(encoding)}
        values: dict[str, PlainValue] = {}
        for p in self._order:  # parents before children
            if self._active_given(p, values):
                values[p.name] = p.decode(vector[slices[p.name]].tolist())
        return {name: values[name] for name in self.names if name in values}

    def params_to_unit(
        self,
        params: Mapping[str, PlainValue],
        encoding: CategoricalEncoding = CategoricalEncoding.INDEX,
    ) -> np.ndarray:
        """Encode params (inactive or missing parameters get a neutral filler)."""
        coords: list[float] = []
        for p in self.params:
            if p.name in params and self._active_given(p, params):
                coords.extend(p.encode(params[p.name], encoding))
            else:
                coords.extend(p.filler(encoding))
        return np.asarray(coords, dtype=float)

    def is_active(self, name: str, params: Mapping[str, PlainValue]) -> bool:
        """Whether ``name`` is active given the (parent) values in ``params``."""
        return self._active_given(self._by_name[name], params)

    def _active_given(self, p: ParamSpec, params: Mapping[str, PlainValue]) -> bool:
        while p.parent is not None:
            parent = self._by_name[p.parent]
            if p.parent not in params or parent.index_of(params[p.parent]) not in p.parent_indexes:
                return False
            p = parent
        return True

    def contains(self, params: Mapping[str, PlainValue]) -> bool:
        """Whether ``params`` is exactly a valid point of this space (``check_params``)."""
        try:
            self.check_params(params)
        except SpaceError:
            return False
        return True

    def check_params(self, params: Mapping[str, PlainValue]) -> None:
        """Raise SpaceError unless ``params`` is exactly a valid point of this space."""
        for name in params:
            if name not in self._by_name:
                raise SpaceError(f"params: unknown parameter {name!r}")
        for p in self.params:
            active = self._active_given(p, params)
            if not active:
                if p.name in params:
                    raise SpaceError(f"params: {p.name!r} is set but its condition is inactive")
                continue
            if p.name not in params:
                raise SpaceError(f"params: {p.name!r} is missing")
            value = params[p.name]
            if p.is_numeric_range:
                if isinstance(value, str) or not math.isfinite(float(value)):
                    raise SpaceError(f"params: {p.name!r} must be a finite number, got {value!r}")
                if not p.low <= float(value) <= p.high:
                    bounds = f"[{format_number(p.low)}, {format_number(p.high)}]"
                    raise SpaceError(f"params: {p.name!r}={value!r} outside {bounds}")
            elif p.index_of(value) is None:
                raise SpaceError(f"params: {p.name!r}={value!r} is not one of {list(p.values)}")


# --------------------------------------------------------------------------- validation


def format_number(x: float) -> str:
    """``3`` for 3.0, ``0.1`` for 0.1: how messages quote a number."""
    return repr(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else repr(x)


def _validate(space: space_pb2.SearchSpace) -> list[ParamSpec]:
    first_seen: dict[str, int] = {}
    specs: list[ParamSpec] = []
    for i, param in enumerate(space.parameters):
        if not param.name.strip():
            raise SpaceError(f"parameters[{i}]: name is required")
        where = f"parameters[{i}] {param.name!r}"
        if param.name in first_seen:
            raise SpaceError(f"{where}: duplicate name (also parameters[{first_seen[param.name]}])")
        first_seen[param.name] = i
        specs.append(_domain(where, param))
    # Conditions need every parameter's domain, so they are checked second.
    by_name = {s.name: (i, s) for i, s in enumerate(specs)}
    resolved: list[ParamSpec] = []
    for i, (param, spec) in enumerate(zip(space.parameters, specs, strict=True)):
        if param.HasField("condition"):
            spec = _condition(f"parameters[{i}] {param.name!r}", param, spec, by_name)
        resolved.append(spec)
    _check_cycles(resolved)
    return resolved


def _scale_is_log(where: str, scale: int) -> bool:
    if scale not in (space_pb2.SCALE_UNSPECIFIED, space_pb2.SCALE_LINEAR, space_pb2.SCALE_LOG):
        raise SpaceError(f"{where}.scale: unknown value {scale}")
    return scale == space_pb2.SCALE_LOG


def _domain(where: str, param: space_pb2.Parameter) -> ParamSpec:
    kind = param.WhichOneof("domain")
    if kind is None:
        raise SpaceError(
            f"{where}: no domain set (set one of float_range, int_range, categorical, ordinal)"
        )
    if kind in ("float_range", "int_range"):
        rng = getattr(param, kind)
        low, high = float(rng.low), float(rng.high)
        log = _scale_is_log(f"{where}: {kind}", rng.scale)
        for bound, value in (("low", low), ("high", high)):
            if not math.isfinite(value):
                raise SpaceError(f"{where}: {kind}.{bound} must be finite (got {value})")
        if low >= high:
            raise SpaceError(
                f"{where}: {kind}.low must be < high "
                f"(got {format_number(low)} >= {format_number(high)})"
            )
        if log and low <= 0:
            raise SpaceError(
                f"{where}: {kind}.low must be > 0 for log scale (got {format_number(low)})"
            )
        return ParamSpec(param.name, Kind(kind), low=low, high=high, log=log)
    if kind == "categorical":
        choices = list(param.categorical.choices)
        if not choices:
            raise SpaceError(f"{where}: categorical.choices must not be empty")
        seen: set[str] = set()
        for j, choice in enumerate(choices):
            if choice == "":
                raise SpaceError(f"{where}: categorical.choices[{j}] must not be empty")
            if choice in seen:
                raise SpaceError(f"{where}: categorical.choices[{j}] {choice!r} is a duplicate")
            seen.add(choice)
        return ParamSpec(param.name, Kind.CATEGORICAL, values=tuple(choices))
    values = list(param.ordinal.values)
    if not values:
        raise SpaceError(f"{where}: ordinal.values must not be empty")
    for j, value in enumerate(values):
        if not math.isfinite(value):
            raise SpaceError(f"{where}: ordinal.values[{j}] must be finite (got {value})")
        if j and value <= values[j - 1]:
            raise SpaceError(
                f"{where}: ordinal.values must be strictly increasing "
                f"(values[{j}]={format_number(value)} "
                f"<= values[{j - 1}]={format_number(values[j - 1])})"
            )
    # Batch sizes and layer counts come back as ints, so workers need no casts.
    plain: tuple[PlainValue, ...] = (
        tuple(int(v) for v in values)
        if all(float(v).is_integer() and abs(v) < 2**53 for v in values)
        else tuple(float(v) for v in values)
    )
    return ParamSpec(param.name, Kind.ORDINAL, values=plain)


def _condition(
    where: str,
    param: space_pb2.Parameter,
    spec: ParamSpec,
    by_name: Mapping[str, tuple[int, ParamSpec]],
) -> ParamSpec:
    cond = param.condition
    if not cond.parent:
        raise SpaceError(f"{where}: condition.parent is required")
    if cond.parent == param.name:
        raise SpaceError(f"{where}: condition.parent must not be the parameter itself")
    if cond.parent not in by_name:
        raise SpaceError(f"{where}: condition.parent {cond.parent!r} is not a parameter")
    parent_index, parent = by_name[cond.parent]
    if parent.kind not in (Kind.CATEGORICAL, Kind.ORDINAL):
        raise SpaceError(
            f"{where}: condition.parent {cond.parent!r} must be categorical or ordinal "
            f"(parameters[{parent_index}] is {parent.kind.value})"
        )
    if not cond.parent_values:
        raise SpaceError(f"{where}: condition.parent_values must not be empty")
    indexes: set[int] = set()
    for j, text in enumerate(cond.parent_values):
        index = parent.index_of(text)
        if index is None:
            raise SpaceError(
                f"{where}: condition.parent_values[{j}] {text!r} is not one of "
                f"{cond.parent!r} {'choices' if parent.kind is Kind.CATEGORICAL else 'values'} "
                f"{[str(v) for v in parent.values]}"
            )
        indexes.add(index)
    return replace(spec, parent=cond.parent, parent_indexes=frozenset(indexes))


def _check_cycles(specs: Sequence[ParamSpec]) -> None:
    parents = {s.name: s.parent for s in specs}
    index = {s.name: i for i, s in enumerate(specs)}
    for s in specs:
        chain = [s.name]
        node = s.parent
        while node is not None:
            if node in chain:
                loop = " -> ".join([*chain[chain.index(node) :], node])
                raise SpaceError(f"parameters[{index[s.name]}] {s.name!r}: condition cycle {loop}")
            chain.append(node)
            node = parents[node]


def _topological_order(specs: Sequence[ParamSpec]) -> list[ParamSpec]:
    by_name = {s.name: s for s in specs}
    done: dict[str, ParamSpec] = {}

    def visit(s: ParamSpec) -> None:
        if s.name in done:
            return
        if s.parent is not None:
            visit(by_name[s.parent])
        done[s.name] = s

    for s in specs:
        visit(s)
    return list(done.values())
