import math

import numpy as np
import pytest
from ladder.space import CategoricalEncoding, Space, SpaceError
from ladder.v1 import space_pb2 as S


def floats(name: str, low: float, high: float, log: bool = False, **kw: object) -> S.Parameter:
    scale = S.SCALE_LOG if log else S.SCALE_LINEAR
    return S.Parameter(name=name, float_range=S.FloatRange(low=low, high=high, scale=scale), **kw)


def ints(name: str, low: int, high: int, log: bool = False, **kw: object) -> S.Parameter:
    scale = S.SCALE_LOG if log else S.SCALE_LINEAR
    return S.Parameter(name=name, int_range=S.IntRange(low=low, high=high, scale=scale), **kw)


def cat(name: str, *choices: str, **kw: object) -> S.Parameter:
    return S.Parameter(name=name, categorical=S.Categorical(choices=list(choices)), **kw)


def ordinal(name: str, *values: float, **kw: object) -> S.Parameter:
    return S.Parameter(name=name, ordinal=S.Ordinal(values=list(values)), **kw)


def when(parent: str, *values: str) -> S.Condition:
    return S.Condition(parent=parent, parent_values=list(values))


def space(*params: S.Parameter) -> Space:
    return Space.from_proto(S.SearchSpace(parameters=list(params)))


MIXED = [
    floats("lr", 1e-4, 1e-1, log=True),
    cat("opt", "adam", "sgd"),
    floats("momentum", 0.0, 0.99, condition=when("opt", "sgd")),
    ordinal("batch", 16, 32, 64),
    ints("layers", 1, 8, log=True),
    ints("units", 16, 256),
    cat("act", "relu", "tanh", condition=when("batch", "32", "64")),
]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            [floats("a", 0, 1), floats("lr", 0.1, 0.01)],
            "parameters[1] 'lr': float_range.low must be < high (got 0.1 >= 0.01)",
        ),
        (
            [S.Parameter(name="", float_range=S.FloatRange(low=0, high=1))],
            "parameters[0]: name is required",
        ),
        (
            [floats("x", 0, 1), floats("x", 0, 2)],
            "parameters[1] 'x': duplicate name (also parameters[0])",
        ),
        (
            [S.Parameter(name="x")],
            "parameters[0] 'x': no domain set (set one of float_range, int_range, categorical, "
            "ordinal)",
        ),
        ([ints("n", 5, 5)], "parameters[0] 'n': int_range.low must be < high (got 5 >= 5)"),
        (
            [floats("lr", 0, 1, log=True)],
            "parameters[0] 'lr': float_range.low must be > 0 for log scale (got 0)",
        ),
        (
            [ints("n", -2, 4, log=True)],
            "parameters[0] 'n': int_range.low must be > 0 for log scale (got -2)",
        ),
        ([floats("x", math.nan, 1)], "parameters[0] 'x': float_range.low must be finite (got nan)"),
        (
            [floats("x", 0, math.inf)],
            "parameters[0] 'x': float_range.high must be finite (got inf)",
        ),
        ([cat("c")], "parameters[0] 'c': categorical.choices must not be empty"),
        ([cat("c", "a", "b", "a")], "parameters[0] 'c': categorical.choices[2] 'a' is a duplicate"),
        ([cat("c", "a", "")], "parameters[0] 'c': categorical.choices[1] must not be empty"),
        ([ordinal("b")], "parameters[0] 'b': ordinal.values must not be empty"),
        (
            [ordinal("b", 16, 64, 32)],
            "parameters[0] 'b': ordinal.values must be strictly increasing "
            "(values[2]=32 <= values[1]=64)",
        ),
        (
            [ordinal("b", 1, 1)],
            "parameters[0] 'b': ordinal.values must be strictly increasing "
            "(values[1]=1 <= values[0]=1)",
        ),
        (
            [floats("x", 0, 1, condition=when("nope", "a"))],
            "parameters[0] 'x': condition.parent 'nope' is not a parameter",
        ),
        (
            [floats("x", 0, 1, condition=when("x", "a"))],
            "parameters[0] 'x': condition.parent must not be the parameter itself",
        ),
        (
            [floats("y", 0, 1), floats("x", 0, 1, condition=when("y", "a"))],
            "parameters[1] 'x': condition.parent 'y' must be categorical or ordinal "
            "(parameters[0] is float_range)",
        ),
        (
            [cat("c", "a", "b"), floats("x", 0, 1, condition=when("c", "z"))],
            "parameters[1] 'x': condition.parent_values[0] 'z' is not one of 'c' choices "
            "['a', 'b']",
        ),
        (
            [ordinal("b", 16, 32), floats("x", 0, 1, condition=when("b", "48"))],
            "parameters[1] 'x': condition.parent_values[0] '48' is not one of 'b' values "
            "['16', '32']",
        ),
        (
            [cat("c", "a"), floats("x", 0, 1, condition=S.Condition(parent="c"))],
            "parameters[1] 'x': condition.parent_values must not be empty",
        ),
        (
            [floats("x", 0, 1, condition=S.Condition(parent_values=["a"]))],
            "parameters[0] 'x': condition.parent is required",
        ),
        (
            [
                cat("a", "1", "2", condition=when("b", "1")),
                cat("b", "1", "2", condition=when("a", "1")),
            ],
            "parameters[0] 'a': condition cycle a -> b -> a",
        ),
    ],
)
def test_invalid_spaces_name_the_field(params: list[S.Parameter], message: str) -> None:
    with pytest.raises(SpaceError) as err:
        Space.from_proto(S.SearchSpace(parameters=params))
    assert str(err.value) == message


def test_unknown_scale_is_rejected() -> None:
    bad = S.Parameter(name="x", float_range=S.FloatRange(low=0, high=1, scale=9))
    with pytest.raises(
        SpaceError, match=r"parameters\[0\] 'x': float_range.scale: unknown value 9"
    ):
        Space.from_proto(S.SearchSpace(parameters=[bad]))


@pytest.mark.parametrize("encoding", list(CategoricalEncoding))
def test_encoding_round_trips(encoding: CategoricalEncoding) -> None:
    sp = space(*MIXED)
    rng = np.random.default_rng(3)
    for unit in rng.random((200, sp.dim(encoding))):
        params = sp.sample_to_params(unit, encoding)
        sp.check_params(params)
        again = sp.sample_to_params(sp.params_to_unit(params, encoding), encoding)
        assert again.keys() == params.keys()
        for name, value in params.items():
            if isinstance(value, float):
                assert again[name] == pytest.approx(value, rel=1e-9, abs=1e-12)
            else:
                assert again[name] == value


def test_dimensions_per_encoding() -> None:
    sp = space(*MIXED)
    assert sp.dim(CategoricalEncoding.INDEX) == 7
    assert sp.dim(CategoricalEncoding.ONE_HOT) == 7 + 1 + 1  # opt and act are 2-way
    widths = [s.stop - s.start for _, s in sp.columns(CategoricalEncoding.ONE_HOT)]
    assert widths == [1, 2, 1, 1, 1, 1, 2]


def test_decoded_types_and_bounds() -> None:
    sp = space(*MIXED)
    low = sp.sample_to_params([0.0] * sp.dim())
    high = sp.sample_to_params([1.0] * sp.dim())
    assert low["lr"] == pytest.approx(1e-4) and high["lr"] == pytest.approx(1e-1)
    assert (low["layers"], high["layers"]) == (1, 8)
    assert (low["units"], high["units"]) == (16, 256)
    assert (low["batch"], high["batch"]) == (16, 64)
    assert isinstance(low["batch"], int) and isinstance(low["units"], int)
    assert (low["opt"], high["opt"]) == ("adam", "sgd")


def test_every_int_and_choice_gets_an_equal_share() -> None:
    sp = space(ints("n", 1, 4), cat("c", "a", "b", "c"))
    grid = np.linspace(0, 1, 1200, endpoint=False) + 1 / 2400
    counts_n: dict[int, int] = {}
    counts_c: dict[str, int] = {}
    for u in grid:
        params = sp.sample_to_params([u, u])
        counts_n[params["n"]] = counts_n.get(params["n"], 0) + 1
        counts_c[params["c"]] = counts_c.get(params["c"], 0) + 1
    assert counts_n == {1: 300, 2: 300, 3: 300, 4: 300}
    assert counts_c == {"a": 400, "b": 400, "c": 400}


def test_ordinal_with_fractions_stays_float() -> None:
    sp = space(ordinal("dropout", 0.1, 0.25, 0.5))
    assert sp.sample_to_params([0.99]) == {"dropout": 0.5}


def test_inactive_children_are_omitted() -> None:
    sp = space(*MIXED)
    # opt coordinate < 0.5 → adam → no momentum; batch coordinate < 1/3 → 16 → no act.
    params = sp.sample_to_params([0.5, 0.1, 0.7, 0.1, 0.5, 0.5, 0.9])
    assert "momentum" not in params and "act" not in params
    params = sp.sample_to_params([0.5, 0.9, 0.7, 0.9, 0.5, 0.5, 0.9])
    assert params["opt"] == "sgd" and params["momentum"] == pytest.approx(0.693)
    assert params["batch"] == 64 and params["act"] == "tanh"


def test_is_active_follows_the_parent_chain() -> None:
    sp = space(
        cat("model", "linear", "mlp"),
        ints("layers", 1, 4, condition=when("model", "mlp")),
        cat("norm", "batch", "layer"),
        floats("eps", 1e-6, 1e-3, log=True, condition=when("norm", "layer")),
        ordinal("width", 64, 128, condition=when("model", "mlp")),
        floats("wd", 0, 1, condition=when("width", "128")),
    )
    assert not sp.is_active("layers", {"model": "linear"})
    assert sp.is_active("layers", {"model": "mlp"})
    assert not sp.is_active("layers", {})
    assert sp.is_active("wd", {"model": "mlp", "width": 128})
    assert sp.is_active("wd", {"model": "mlp", "width": 128.0})
    # the grandparent switches the whole chain off
    assert not sp.is_active("wd", {"model": "linear", "width": 128})


def test_children_may_be_declared_before_their_parent() -> None:
    sp = space(floats("momentum", 0, 1, condition=when("opt", "sgd")), cat("opt", "adam", "sgd"))
    assert sp.sample_to_params([0.25, 0.75]) == {"momentum": 0.25, "opt": "sgd"}


def test_check_params_rejects_foreign_points() -> None:
    sp = space(*MIXED[:3])
    with pytest.raises(SpaceError, match="'momentum' is set but its condition is inactive"):
        sp.check_params({"lr": 0.01, "opt": "adam", "momentum": 0.5})
    with pytest.raises(SpaceError, match=r"'lr'=2.0 outside \[0.0001, 0.1\]"):
        sp.check_params({"lr": 2.0, "opt": "adam"})
    with pytest.raises(SpaceError, match="unknown parameter 'zz'"):
        sp.check_params({"lr": 0.01, "opt": "adam", "zz": 1})


# ----------------------------------------------------------------------- study config
