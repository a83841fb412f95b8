"""The quantization policy: which scheme and how many bits, per layer, as plain data.

A :class:`QuantPolicy` has a default :class:`LayerConfig`, the bits of the first and last
layers, and overrides keyed by an exact module name or a ``re:`` pattern (``re.fullmatch`` on
the qualified name). Every override and exclusion must match a quantizable layer. Policies
round-trip through YAML, so a searched policy can be saved, read, edited and applied again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lightning_autoq.quant import Quantizer, scheme_class
from lightning_autoq.quant.functional import BACKWARD_MODES
from lightning_autoq.runtime.atomic import write_atomic

Granularity = Literal["tensor", "channel"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel")
PATTERN_PREFIX = "re:"
MAX_BITS = 8


@dataclass(frozen=True)
class LayerConfig:
    """How one layer is quantized.

    Args:
        scheme: scheme of the weights (and of the input activations unless ``act_scheme``).
        weight_bits: weight bit-width.
        act_bits: input-activation bit-width; None leaves the input in float.
        act_scheme: scheme of the input activations; None = ``scheme``.
        granularity: ``"tensor"`` or ``"channel"`` (per output channel) for the weights.
        act_signed: signed input codes; None decides from the first batch.
        bias_bits: bias bit-width; None leaves the bias in float.
        bias_scheme: scheme of the bias.
        backward: input gradient, ``"ste"`` or ``"clipped"``; None = the scheme's default.
        grad_ratio: factor on the input gradient (piecewise-linear backward).
        scheme_options: options of ``scheme`` (fields of its dataclass besides ``bits``, e.g.
            ``{"candidates": 4}`` for ``int_se``), given to the weight quantizer and to the
            activation quantizer when it uses the same scheme.
    """

    scheme: str = "lsq"
    weight_bits: int = 4
    act_bits: int | None = 4
    act_scheme: str | None = None
    granularity: Granularity = "tensor"
    act_signed: bool | None = None
    bias_bits: int | None = 8
    bias_scheme: str = "fixed_point"
    backward: Literal["ste", "clipped"] | None = None
    grad_ratio: float = 1.0
    scheme_options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.scheme_options, Mapping):
            raise ValueError(
                f"scheme_options={self.scheme_options!r} is not allowed; allowed: a mapping of "
                f"option names to values"
            )
        object.__setattr__(self, "scheme_options", dict(self.scheme_options))
        check_scheme_options(self.scheme, self.scheme_options)
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity={self.granularity!r} is not allowed; "
                f"allowed: {', '.join(GRANULARITIES)}"
            )
        if self.act_signed not in (None, True, False):
            raise ValueError(
                f"act_signed={self.act_signed!r} is not allowed; allowed: True, False, None"
            )
        if self.backward is not None and self.backward not in BACKWARD_MODES:
            raise ValueError(
                f"backward={self.backward!r} is not allowed; allowed: {', '.join(BACKWARD_MODES)}"
            )
        # Building throwaway quantizers validates scheme names, bit ranges and range modes
        # with the quantizer's own messages.
        options = self.scheme_options
        checks = [("weight", self.scheme, self.weight_bits, "weight", options)]
        if self.act_bits is not None:
            act_scheme = self.act_scheme or self.scheme
            act_options = options if act_scheme == self.scheme else {}
            checks.append(("act", act_scheme, self.act_bits, "activation", act_options))
        if self.bias_bits is not None:
            checks.append(("bias", self.bias_scheme, self.bias_bits, "weight", {}))
        for role, scheme, bits, kind, opts in checks:
            try:
                Quantizer(scheme, bits, kind=kind, grad_ratio=self.grad_ratio, **opts)  # type: ignore[arg-type]
            except (ValueError, TypeError) as err:
                raise ValueError(f"{role} quantizer: {err}") from None

    def replace(self, **changes: Any) -> LayerConfig:
        """A copy with ``changes`` applied (validated); unknown fields raise."""
        unknown = sorted(set(changes) - LAYER_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown layer config field(s) {unknown}; "
                f"allowed: {', '.join(sorted(LAYER_FIELDS))}"
            )
        return dataclasses.replace(self, **changes)


LAYER_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(LayerConfig))


def scheme_option_names(scheme: str) -> tuple[str, ...]:
    """The options ``scheme`` takes: its dataclass fields besides ``bits``."""
    return tuple(f.name for f in dataclasses.fields(scheme_class(scheme)) if f.name != "bits")


def check_scheme_options(scheme: str, options: Mapping[str, Any]) -> None:
    """Raise a ValueError naming any option ``scheme`` does not take, and the allowed ones."""
    allowed = scheme_option_names(scheme)
    unknown = sorted(str(k) for k in options if k not in allowed)
    if unknown:
        raise ValueError(
            f"unknown scheme option(s) {unknown} for scheme {scheme!r}; allowed: "
            f"{', '.join(allowed) if allowed else 'none'}"
        )


@dataclass
class QuantPolicy:
    """Per-layer quantization choices for a model.

    Args:
        default: the configuration of every quantizable layer not otherwise named.
        first_last_bits: weight and activation bits of the first and last quantizable layers
            (module registration order); None treats them like the others.
        overrides: ``{name or "re:pattern": {field: value}}``; patterns apply in order, exact
            names last, so the most specific entry wins.
        exclude: names or ``re:`` patterns of layers left in float.

    Example:
        >>> overrides = {"re:.*fc": {"weight_bits": 8}}
        >>> policy = QuantPolicy(LayerConfig("clip", 2, 2), overrides=overrides)
        >>> QuantPolicy.from_yaml(policy.to_yaml()) == policy
        True
    """

    default: LayerConfig = field(default_factory=LayerConfig)
    first_last_bits: int | None = 8
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.default, Mapping):
            self.default = LayerConfig(**self.default)
        if not isinstance(self.default, LayerConfig):
            raise ValueError(
                f"default={self.default!r} is not allowed; allowed: a LayerConfig or a mapping "
                "of its fields"
            )
        bits = self.first_last_bits
        if bits is not None and (
            isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS
        ):
            raise ValueError(
                f"first_last_bits={bits!r} is not allowed; allowed: 1..{MAX_BITS} or None"
            )
        if not isinstance(self.overrides, Mapping):
            raise ValueError(
                f"overrides={self.overrides!r} is not allowed; allowed: a mapping of layer names "
                "or 're:' patterns to {field: value}"
            )
        self.exclude = check_layer_keys("exclude", self.exclude)
        for key, changes in self.overrides.items():
            if not isinstance(changes, Mapping):
                raise ValueError(
                    f"override {key!r} must map field names to values, got {changes!r}"
                )
            try:
                _check_override(changes)
            except ValueError as err:
                raise ValueError(f"override {key!r}: {err}") from None
            _compile(key)
        for key in self.exclude:
            _compile(key)

    def resolve(self, names: Sequence[str]) -> dict[str, LayerConfig | None]:
        """The configuration of each layer in ``names`` (None: excluded, stays float).

        Raises:
            ValueError: an override or exclusion matches none of ``names``, or a resulting
                configuration is invalid (the message names the layer).
        """
        names = list(names)
        if not names:
            raise ValueError("the model has no quantizable layer to apply the policy to")
        configs: dict[str, LayerConfig | None] = {}
        edges = {names[0], names[-1]}
        patterns = [k for k in self.overrides if k.startswith(PATTERN_PREFIX)]
        exact = [k for k in self.overrides if not k.startswith(PATTERN_PREFIX)]
        matches = {key: set(_matching(key, names)) for key in [*patterns, *exact, *self.exclude]}
        _check_matches(matches, names)
        excluded = {n for key in self.exclude for n in matches[key]}
        for name in names:
            if name in excluded:
                configs[name] = None
                continue
            changes: dict[str, Any] = {}
            if self.first_last_bits is not None and name in edges:
                changes["weight_bits"] = self.first_last_bits
                if self.default.act_bits is not None:
                    changes["act_bits"] = self.first_last_bits
            for key in [*patterns, *exact]:
                if name in matches[key]:
                    changes.update(self.overrides[key])
            try:
                configs[name] = self.default.replace(**changes)
            except ValueError as err:
                hint = ""
                if self.first_last_bits is not None and name in edges:
                    hint = (
                        f" (first_last_bits={self.first_last_bits} applies to the first and last"
                        " layers: set first_last_bits=None or override this layer's bits)"
                    )
                raise ValueError(f"layer {name!r}: {err}{hint}") from None
        return configs

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what YAML stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantPolicy:
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a policy of type {type(data).__name__} is not allowed; allowed: a mapping with "
                "default, first_last_bits, overrides, exclude"
            )
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown policy field(s) {unknown}; allowed: default, first_last_bits, "
                "overrides, exclude"
            )
        data = dict(data)
        if isinstance(data.get("default"), Mapping):
            data["default"] = LayerConfig(**data["default"])
        return cls(**data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> QuantPolicy:
        return cls.from_dict(yaml.safe_load(text) or {})

    def save(self, path: str | Path) -> None:
        """Write the policy as YAML atomically: a temporary file in the same folder, flushed to
        disk, then renamed into place; on any failure the temporary file is removed and an
        existing ``path`` is left as it was."""
        write_atomic(path, self.to_yaml().encode())

    @classmethod
    def load(cls, path: str | Path) -> QuantPolicy:
        return cls.from_yaml(Path(path).read_text())

    @classmethod
    def explicit(cls, configs: Mapping[str, LayerConfig | None]) -> QuantPolicy:
        """A policy that names every layer: what a search writes out."""
        named = {n: c for n, c in configs.items() if c is not None}
        if not named:
            raise ValueError("an explicit policy needs at least one quantized layer")
        default = next(iter(named.values()))
        overrides = {}
        for name, cfg in named.items():
            diff = {
                f: getattr(cfg, f)
                for f in sorted(LAYER_FIELDS)
                if getattr(cfg, f) != getattr(default, f)
            }
            if diff:
                overrides[name] = diff
        excluded = [n for n, c in configs.items() if c is None]
        return cls(default=default, first_last_bits=None, overrides=overrides, exclude=excluded)


def _check_override(changes: Mapping[str, Any]) -> None:
    """What an override can be checked for alone: field names, scheme names, bit range.

    Whether a scheme allows the bits is checked per layer in :meth:`QuantPolicy.resolve`,
    once every override that applies to the layer is combined.
    """
    unknown = sorted(set(changes) - LAYER_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown layer config field(s) {unknown}; allowed: {', '.join(sorted(LAYER_FIELDS))}"
        )
    for name in ("scheme", "act_scheme", "bias_scheme"):
        if changes.get(name) is not None:
            scheme_class(changes[name])
    options = changes.get("scheme_options")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"scheme_options={options!r} is not allowed; allowed: a mapping")
    if options and changes.get("scheme") is not None:
        check_scheme_options(changes["scheme"], options)
    for name in ("weight_bits", "act_bits", "bias_bits"):
        bits = changes.get(name)
        if bits is not None and (
            isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS
        ):
            raise ValueError(f"{name}={bits!r} is not allowed; allowed: 1..{MAX_BITS}")


def _compile(key: str) -> re.Pattern[str] | None:
    if not key.startswith(PATTERN_PREFIX):
        return None
    try:
        return re.compile(key[len(PATTERN_PREFIX) :])
    except re.error as err:
        raise ValueError(f"invalid pattern {key!r}: {err}") from None


def _matching(key: str, names: Sequence[str]) -> list[str]:
    pattern = _compile(key)
    if pattern is None:
        return [key] if key in names else []
    return [n for n in names if pattern.fullmatch(n)]


def _check_matches(
    matches: Mapping[str, set[str]], names: Sequence[str], what: str = "policy key"
) -> None:
    for key, matched in matches.items():
        if not matched:
            more = f", ... ({len(names)} in all)" if len(names) > 12 else ""
            shown = ", ".join(names[:12]) + more
            raise ValueError(f"{what} {key!r} matches no quantizable layer; layers: {shown}")


def check_layer_keys(what: str, keys: object) -> list[str]:
    """``keys`` as a list if it is a list of layer names / ``re:`` patterns (compiled to check).

    A bare string is refused: iterating it would give one key per character.
    """
    if isinstance(keys, str | bytes) or not isinstance(keys, Sequence | set | frozenset):
        raise ValueError(
            f"{what}={keys!r} is not allowed; allowed: a list of layer names or 're:' patterns"
        )
    keys = list(keys)
    for key in keys:
        if not isinstance(key, str):
            raise ValueError(
                f"{what} entry {key!r} is not allowed; allowed: a layer name or 're:' pattern"
            )
        _compile(key)
    return keys


def check_keys_match(what: str, keys: Sequence[str], names: Sequence[str]) -> None:
    """Raise a ValueError naming the first of ``keys`` (names or ``re:`` patterns) that
    matches none of ``names``, with the layer names that exist."""
    _check_matches({key: set(_matching(key, names)) for key in keys}, names, what)
