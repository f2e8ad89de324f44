"""How each parameter of a study is put on a plot axis and into a model's feature
matrix: numeric (linear or log) or categorical (choices in the search space's order).

The study's search space decides when it names the parameter; a parameter it does not
name (a study whose space lineage did not record) is numeric when every value seen is
a number, else categorical with its values in sorted order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ladder.params import PlainValue
from ladder.v1 import space_pb2


@dataclass(frozen=True)
class ParamAxis:
    name: str
    categorical: bool = False
    log: bool = False
    choices: tuple[str, ...] = ()  # categorical: the order of the axis

    def encode(self, value: PlainValue | None) -> float | None:
        """The value as a coordinate: a choice's index, log10 of a log-scaled number,
        else the number; None when it is missing (an inactive conditional parameter)
        or cannot be placed (an unknown choice, a non-positive value on a log axis)."""
        if value is None:
            return None
        if self.categorical:
            text = str(value)
            return float(self.choices.index(text)) if text in self.choices else None
        if isinstance(value, str):
            return None
        number = float(value)
        if self.log:
            return math.log10(number) if number > 0 else None
        return number if math.isfinite(number) else None

    def tick_labels(self, low: float, high: float) -> tuple[list[float], list[str]] | None:
        """Ticks that name what a coordinate means: the choices, or the powers of ten
        of a log axis between ``low`` and ``high``; None for a plain numeric axis."""
        if self.categorical:
            return [float(i) for i in range(len(self.choices))], list(self.choices)
        if self.log and math.isfinite(low) and math.isfinite(high):
            first, last = math.floor(low), math.ceil(high)
            powers = list(range(first, last + 1))
            return [float(p) for p in powers], [f"1e{p}" for p in powers]
        return None


def _space_axis(param: space_pb2.Parameter) -> ParamAxis:
    kind = param.WhichOneof("domain")
    if kind == "categorical":
        return ParamAxis(param.name, categorical=True, choices=tuple(param.categorical.choices))
    if kind == "float_range":
        return ParamAxis(param.name, log=param.float_range.scale == space_pb2.SCALE_LOG)
    if kind == "int_range":
        return ParamAxis(param.name, log=param.int_range.scale == space_pb2.SCALE_LOG)
    return ParamAxis(param.name)  # ordinal: numbers in their order


def _inferred_axis(name: str, values: Iterable[PlainValue]) -> ParamAxis:
    seen = list(values)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
        return ParamAxis(name)
    return ParamAxis(name, categorical=True, choices=tuple(sorted({str(v) for v in seen})))


def param_axes(
    space: space_pb2.SearchSpace | None, params: Sequence[Mapping[str, PlainValue]]
) -> list[ParamAxis]:
    """One axis per parameter: the space's parameters in its order, then any other
    parameter the trials carry (sorted by name)."""
    axes = [_space_axis(p) for p in (space.parameters if space is not None else ())]
    known = {a.name for a in axes}
    others = sorted({name for row in params for name in row} - known)
    for name in others:
        axes.append(_inferred_axis(name, (row[name] for row in params if name in row)))
    return axes
