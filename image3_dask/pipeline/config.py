"""Parsing, validating and writing the parameters of the pipeline steps.

Parameters come from three places, applied in this order: the defaults of
:mod:`image3_dask.pipeline.step_specs`, a TOML file (``--config``), and overrides given as
``steps.<step>.<name>=<value>`` strings or as a ``{step: {name: value}}`` dictionary.
"""

from __future__ import annotations

import ast
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from image3_dask.errors import ConfigError
from image3_dask.pipeline.step_specs import (
    COMMON_SPEC,
    EXTRA_SPECS,
    OFFICIAL_SPECS,
    ORDERED,
    RANGES,
    STEP_ORDER,
    TEXT_FORMATS,
)

__all__ = [
    "Interval",
    "Param",
    "PipelineConfig",
    "STEP_PARAMS",
    "StepConfig",
    "parse_bool",
    "parse_spec",
]

_LINE = re.compile(r"^\s*(\w+)\s*=\s*(\w+)\((.*)\)\s*(?:#\s*(.*))?$")


def parse_bool(value: Any) -> bool:
    """A boolean parameter value as configobj reads it (``true/yes/1/on``, ``false/no/0/off``).

    Raises
    ------
    ValueError
        When ``value`` is neither.
    """
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("true", "yes", "1", "on"):
        return True
    if s in ("false", "no", "0", "off"):
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Interval:
    """Allowed values of a number, from interval notation: ``"(0, inf)"``, ``"[0, 1]"``,
    ``"{1, 3}"`` (:data:`image3_dask.pipeline.step_specs.RANGES`)."""

    text: str

    def __post_init__(self):
        t = self.text.strip()
        if not (t[0] in "([{" and t[-1] in ")]}" and (t[0] == "{") == (t[-1] == "}")):
            raise ValueError(f"not an interval: {self.text!r}")

    def _bounds(self) -> tuple[float, float]:
        lo, hi = (float(v) for v in self.text.strip()[1:-1].split(","))
        return lo, hi

    def contains(self, value: float) -> bool:
        """Whether ``value`` is allowed."""
        t = self.text.strip()
        if t[0] == "{":
            return value in {float(v) for v in t[1:-1].split(",")}
        lo, hi = self._bounds()
        above = value > lo if t[0] == "(" else value >= lo
        below = value < hi if t[-1] == ")" else value <= hi
        return above and below

    def describe(self) -> str:
        """The allowed values in words (``"greater than 0"``, ``"from 0 to 1"``...)."""
        t = self.text.strip()
        if t[0] == "{":
            return "one of " + ", ".join(v.strip() for v in t[1:-1].split(","))
        lo, hi = self._bounds()
        low = f"{'greater than' if t[0] == '(' else 'at least'} {lo:g}"
        high = f"{'less than' if t[-1] == ')' else 'at most'} {hi:g}"
        if math.isinf(hi):
            return low
        if math.isinf(lo):
            return high
        if t[0] == "[" and t[-1] == "]":
            return f"from {lo:g} to {hi:g}"
        return f"{low} and {high}"


def _check_text_format(value: str, form: str, where: str) -> None:
    """Check a parameter given as text against its form in ``TEXT_FORMATS``."""
    if form == "fill value":
        if value.strip().upper() in ("NAN", "INDEF"):
            return
        try:
            if not math.isfinite(float(value)):
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"{where}: {value!r} is not a fill value; give a number, NAN or INDEF"
            ) from None
        return
    kind, n, interval = form.split(" ", 2)
    conv = float if kind == "numbers" else int
    items = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    allowed = Interval(interval)
    try:
        numbers = [conv(v) for v in items]
    except ValueError:
        numbers = []
    if len(numbers) != int(n) or not all(math.isfinite(x) and allowed.contains(x) for x in numbers):
        what = "numbers" if kind == "numbers" else "integers"
        raise ConfigError(
            f"{where}: {value!r} is not {n} {what} {allowed.describe()}, separated by a space"
        )


@dataclass(frozen=True)
class Param:
    """One step parameter: its name, configobj type, default, allowed options and help."""

    name: str
    kind: str
    default: Any
    help: str
    options: tuple = ()
    vmin: float | None = None
    vmax: float | None = None
    allowed: Interval | tuple[Interval, ...] | None = None
    text_format: str | None = None

    def coerce(self, value: Any, where: str) -> Any:
        """Convert ``value`` (a string from the command line or a TOML value) to this type.

        Besides the type, checks the value against the specification's ``min``/``max`` and
        options, its range (``allowed``, from ``RANGES``; floats must be finite) and, for
        numbers given as text, its form (``text_format``, from ``TEXT_FORMATS``).

        Raises
        ------
        ConfigError
            When the value cannot be converted or is not allowed; the message names ``where``
            (``--steps.resample.pixel_scale``), the value and what is allowed.
        """
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        try:
            out = self._convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {value!r} is not a valid {self.kind} ({exc})") from None
        if self.kind == "option" and out not in self.options:
            raise ConfigError(f"{where}: {value!r} is not one of {list(self.options)}")
        if self.kind in ("integer", "float") and out is not None:
            if self.vmin is not None and out < self.vmin:
                raise ConfigError(f"{where}: {out} is below the minimum {self.vmin}")
            if self.vmax is not None and out > self.vmax:
                raise ConfigError(f"{where}: {out} is above the maximum {self.vmax}")
        if self.kind.endswith("_list") and out is not None:
            n = len(out)
            if (self.vmin is not None and n < self.vmin) or (
                self.vmax is not None and n > self.vmax
            ):
                raise ConfigError(
                    f"{where}: expected {int(self.vmin)} to {int(self.vmax)} values, got {n}"
                )
        if out is not None:
            self._check_allowed(out, where)
        return out

    def _check_allowed(self, out: Any, where: str) -> None:
        if self.text_format is not None and isinstance(out, str):
            _check_text_format(out, self.text_format, where)
        if self.kind not in ("integer", "float", "int_list", "float_list"):
            return
        values = out if self.kind.endswith("_list") else [out]
        if isinstance(self.allowed, tuple):
            intervals = list(self.allowed)
        else:
            intervals = [self.allowed] * len(values)
        for i, (v, interval) in enumerate(zip(values, intervals, strict=False)):
            what = (
                f"{out!r}"
                if len(values) == 1 and not self.kind.endswith("_list")
                else (f"{out!r} (value {i + 1}: {v!r})")
            )
            if not math.isfinite(v):
                raise ConfigError(f"{where}: {what} is not a finite number")
            if interval is not None and not interval.contains(v):
                raise ConfigError(f"{where}: {what} must be {interval.describe()}")

    def _convert(self, value: Any) -> Any:
        kind = self.kind
        if kind == "boolean":
            return parse_bool(value)
        if kind == "integer":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            f = float(value)
            if f != int(f):
                raise ValueError("expected an integer")
            return int(f)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if kind == "string":
            return str(value)
        if kind == "option":
            for opt in self.options:
                if opt is not None and str(opt) == str(value).strip():
                    return opt
            return value
        if kind in ("int_list", "float_list"):
            conv = int if kind == "int_list" else float
            items = value
            if isinstance(value, str):
                items = [v for v in re.split(r"[,\s]+", value.strip().strip("[]()")) if v]
            return [conv(v) for v in items]
        raise ValueError(f"unknown parameter type {kind}")


def _split_args(argtext: str) -> tuple[list, dict]:
    tree = ast.parse(f"f({argtext})", mode="eval").body
    args = [ast.literal_eval(a) for a in tree.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
    return args, kwargs


def parse_spec(spec: str) -> dict[str, Param]:
    """Parse configobj-style specification lines into :class:`Param` objects."""
    params: dict[str, Param] = {}
    for line in spec.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        name, kind, argtext, help_ = m.groups()
        args, kwargs = _split_args(argtext)
        params[name] = Param(
            name=name,
            kind=kind,
            default=kwargs.get("default"),
            help=(help_ or "").strip(),
            options=tuple(args),
            vmin=kwargs.get("min"),
            vmax=kwargs.get("max"),
        )
    return params


def _with_ranges(step: str, params: dict[str, Param]) -> dict[str, Param]:
    """``params`` with their allowed ranges and text forms (``RANGES``, ``TEXT_FORMATS``)."""
    from dataclasses import replace

    out = dict(params)
    for name, spec in RANGES.get(step, {}).items():
        allowed = tuple(Interval(s) for s in spec) if isinstance(spec, tuple) else Interval(spec)
        out[name] = replace(out[name], allowed=allowed)
    for name, form in TEXT_FORMATS.get(step, {}).items():
        out[name] = replace(out[name], text_format=form)
    return out


STEP_PARAMS: dict[str, dict[str, Param]] = {
    step: _with_ranges(
        step,
        {
            **parse_spec(COMMON_SPEC),
            **parse_spec(OFFICIAL_SPECS[step]),
            **parse_spec(EXTRA_SPECS[step]),
        },
    )
    for step in STEP_ORDER
}


class StepConfig(dict):
    """The parameters of one step, as a dictionary that also allows attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class PipelineConfig:
    """The parameters of every step of the pipeline.

    Parameters
    ----------
    steps : dict, optional
        ``{step: {parameter: value}}`` overrides of the defaults.
    """

    def __init__(self, steps: dict[str, dict[str, Any]] | None = None):
        self.steps: dict[str, StepConfig] = {
            step: StepConfig({name: p.default for name, p in params.items()})
            for step, params in STEP_PARAMS.items()
        }
        #: ``{step: {parameter: source}}``: where each value came from (``"default"``, a file,
        #: ``--steps``, ``steps``, ``crds:<file>``).
        self.origins: dict[str, dict[str, str]] = {
            step: dict.fromkeys(params, "default") for step, params in STEP_PARAMS.items()
        }
        if steps:
            self.update(steps)

    def __getitem__(self, step: str) -> StepConfig:
        return self.steps[step]

    def update(self, steps: dict[str, dict[str, Any]], source: str = "steps") -> None:
        """Apply ``{step: {parameter: value}}`` overrides, checking names and values."""
        for step, values in steps.items():
            if step not in STEP_PARAMS:
                raise ConfigError(
                    f"{source}: unknown step {step!r}; the steps are {', '.join(STEP_ORDER)}"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{source}.{step}: expected a table of parameters")
            for name, value in values.items():
                params = STEP_PARAMS[step]
                if name not in params:
                    raise ConfigError(
                        f"{source}.{step}: unknown parameter {name!r}; valid parameters are: "
                        + ", ".join(sorted(params))
                    )
                self.steps[step][name] = params[name].coerce(value, f"{source}.{step}.{name}")
                self.origins[step][name] = source

    def update_defaults(
        self, steps: dict[str, dict[str, Any]], source: str
    ) -> dict[str, dict[str, Any]]:
        """Apply values only to parameters still at their default (stpipe's CRDS ``pars-*``
        layer: defaults < CRDS < parameter file < command line).

        Returns
        -------
        dict
            ``{step: {parameter: value}}`` applied.
        """
        applied: dict[str, dict[str, Any]] = {}
        for step, values in steps.items():
            free = {k: v for k, v in values.items() if self.origins[step].get(k) == "default"}
            if free:
                self.update({step: free}, source=source)
                applied[step] = {k: self.steps[step][k] for k in free}
        return applied

    def check(self) -> None:
        """Check what each value alone cannot show: parameters that must increase together.

        :meth:`update` checks every value as it is set; call this once all are set (before a
        cluster starts).

        Raises
        ------
        ConfigError
            When, e.g., ``sharplo`` is above ``sharphi`` or the encircled energies
            ``aperture_ee1..3`` do not increase (``ORDERED``); the message names the step and
            the parameters with their values.
        """
        for step, rules in ORDERED.items():
            values = self.steps[step]
            for rule in rules:
                names = rule.split()[::2]
                ops = rule.split()[1::2]
                for a, op, b in zip(names, ops, names[1:], strict=False):
                    va, vb = values[a], values[b]
                    if va is None or vb is None:
                        continue
                    if (op == "<" and not va < vb) or (op == "<=" and not va <= vb):
                        raise ConfigError(
                            f"steps.{step}: {a}={va!r} and {b}={vb!r}, but {rule} is required"
                        )

    def apply_overrides(self, overrides: list[str]) -> None:
        """Apply ``steps.<step>.<name>=<value>`` strings (the leading dashes are optional)."""
        for item in overrides:
            text = item.lstrip("-")
            if "=" not in text:
                raise ConfigError(f"{item}: expected steps.<step>.<parameter>=<value>")
            key, value = text.split("=", 1)
            parts = key.split(".")
            if len(parts) != 3 or parts[0] != "steps":
                raise ConfigError(f"{item}: expected steps.<step>.<parameter>=<value>")
            self.update({parts[1]: {parts[2]: value}}, source="--steps")

    @classmethod
    def from_toml(cls, path: str | Path) -> PipelineConfig:
        """Read a TOML file with a ``[steps.<step>]`` table per step."""
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        unknown = set(data) - {"steps"}
        if unknown:
            raise ConfigError(
                f"{path}: unknown top-level keys {sorted(unknown)}; expected [steps.<step>]"
            )
        cfg = cls()
        cfg.update(data.get("steps", {}), source=str(path))
        return cfg

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The parameters as plain dictionaries."""
        return {step: dict(values) for step, values in self.steps.items()}

    def write_toml(self, path: str | Path) -> Path:
        """Write every step's parameters with their help, as ``image3-dask config`` does.

        Parameters whose value is ``None`` are written as comments (TOML has no null).
        """
        path = Path(path)
        lines = [
            "# image3-dask pipeline configuration: every step's parameters with their defaults.",
            "# Parameter names and defaults are those of jwst 3.0's calwebb_image3; those marked",
            "# [image3-dask] exist only here. Read back with `image3-dask run ASN --config FILE`.",
            "",
        ]
        for step in STEP_ORDER:
            lines.append(f"[steps.{step}]")
            for name, param in STEP_PARAMS[step].items():
                value = self.steps[step][name]
                extra = (
                    f" (one of {', '.join(map(str, param.options))})"
                    if param.kind == "option"
                    else ""
                )
                lines.append(f"# {param.help}{extra}".rstrip())
                if value is None:
                    lines.append(f"# {name} = <unset>")
                else:
                    lines.append(tomli_w.dumps({name: value}).strip())
            lines.append("")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))
        return path
