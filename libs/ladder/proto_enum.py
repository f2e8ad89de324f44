"""One vocabulary per proto enum: a StrEnum's plain names and the proto numbers.

The study model reads numbers into names (``parse``); the client writes names as
numbers (``number``). Both use the same table, so a name cannot mean one thing to
the SDK and another to the services.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

E = TypeVar("E", bound=StrEnum)


class ProtoEnum(Generic[E]):
    """The StrEnum ``names`` over the proto enum ``proto``: member ``X`` is the proto
    value named ``X`` or ``<PREFIX>_X`` (``SMOOTHING_NONE``, ``ASHA_PROMOTION``);
    ``unset`` is what the proto's zero (``*_UNSPECIFIED``) means. Built at import, so a
    proto value without a name (or a name without a value) fails at once."""

    def __init__(self, field: str, names: type[E], proto: EnumTypeWrapper, unset: E) -> None:
        self.field = field
        self._numbers: dict[E, int] = {}
        for name in names:
            matches = [
                number
                for key, number in proto.items()
                if number != 0 and (key == name.name or key.endswith(f"_{name.name}"))
            ]
            if len(matches) != 1:
                raise ValueError(f"{field}: {name.name} matches proto values {matches}")
            self._numbers[name] = matches[0]
        unnamed = set(proto.values()) - {0, *self._numbers.values()}
        if unnamed:
            raise ValueError(f"{field}: proto values {sorted(unnamed)} have no name")
        self._names = {number: name for name, number in self._numbers.items()}
        self._names[0] = unset

    @property
    def names(self) -> list[str]:
        return sorted(name.value for name in self._numbers)

    def parse(self, number: int, error: type[ValueError] = ValueError) -> E:
        """The name of proto number ``number``; ``error`` naming the field if unknown."""
        try:
            return self._names[number]
        except KeyError:
            raise error(f"{self.field}: unknown value {number}") from None

    def number(self, name: str) -> int:
        """The proto number of a plain name (case-insensitive); KeyError if unknown."""
        for candidate, number in self._numbers.items():
            if candidate.value == name.lower():
                return number
        raise KeyError(name)
