"""The scheme registry: exactly the documented schemes, the AutoQNN eight in paper order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

import lightning_autoq
from lightning_autoq.quant import Scheme, make_scheme, register_scheme, scheme_class
from lightning_autoq.quant.schemes.base import Params

pytestmark = pytest.mark.usefixtures("single_thread")

TEN = {
    "binary",
    "ternary",
    "ul2q",
    "fixed_point",
    "zoom",
    "clip",
    "power_of_two",
    "residual_binary",
    "lsq",
    "int_se",
}
#: The QAT methods of issue 7, registered beside the ten.
QAT_METHODS = {"lsq_plus", "pact", "dorefa", "apot", "lq_nets", "n2uq"}
ALL_SCHEMES = TEN | QAT_METHODS


def test_available_schemes_are_exactly_the_registered_ones():
    names = lightning_autoq.available_schemes()
    assert set(names) == ALL_SCHEMES
    assert len(names) == len(ALL_SCHEMES)
    assert names == sorted(names)


def test_autoqnn_schemes_in_paper_order():
    assert lightning_autoq.AUTOQNN_SCHEMES == (
        "binary",
        "ternary",
        "ul2q",
        "fixed_point",
        "zoom",
        "clip",
        "power_of_two",
        "residual_binary",
    )


@pytest.mark.parametrize("name", sorted(ALL_SCHEMES))
def test_registered_class_is_consistent(name):
    cls = scheme_class(name)
    assert issubclass(cls, Scheme) and cls.name == name
    lo, hi = cls.bit_range
    assert 1 <= lo <= hi <= 8
    scheme = make_scheme(name, lo)
    assert set(cls.learnable) <= set(scheme.param_names())
    assert cls.default_backward in ("ste", "clipped")


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError, match="'clip' is already registered"):

        @register_scheme
        @dataclass
        class Clip2(Scheme):
            name: ClassVar[str] = "clip"

            def param_names(self) -> tuple[str, ...]:
                return ()

            def levels(self, params: Params, signed: bool):
                raise NotImplementedError

    assert lightning_autoq.available_schemes().count("clip") == 1


def test_unknown_scheme_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown scheme 'nope'") as info:
        scheme_class("nope")
    for name in TEN:
        assert name in str(info.value)
