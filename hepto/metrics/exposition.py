"""The Prometheus text exposition format, version 0.0.4: families of samples, as text.

https://prometheus.io/docs/instrumenting/exposition_formats/ : one ``# HELP`` and one
``# TYPE`` line per family, then one line per sample, ``name{label="value"} value``.
Names are checked when a family is declared (a wrong one is a bug, found by the unit
tests), label values are escaped when written (they come from the cluster: member
names, reasons).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
KINDS: Final = ("counter", "gauge")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _check_metric(metric: Metric, attribute: object, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a Prometheus metric name")
    if metric.kind not in KINDS:
        raise ValueError(f"{metric.kind!r} is not one of {', '.join(KINDS)}")
    if metric.kind == "counter" and not name.endswith("_total"):
        raise ValueError(f"the counter {name} must end in _total")


@attrs.frozen
class Metric:
    """A family's name, type and help: what ``docs/metrics.rst`` lists.

    Called with its samples, it makes the :class:`Family` of one scrape.
    """

    name: str = attrs.field(validator=_check_metric)
    kind: str
    help: str

    def __call__(self, samples: Iterable[tuple[Mapping[str, str], float]] | float) -> Family:
        if isinstance(samples, (int, float)):
            return Family(self, (("", samples),))
        return Family(self, tuple((_labels(labels), value) for labels, value in samples))


@attrs.frozen
class Family:
    """One metric's samples in one scrape: each its labels as written (``{a="b"}``, or
    nothing), and its value."""

    metric: Metric
    samples: tuple[tuple[str, float], ...]


#: Label names already checked: the few the code uses, each checked once.
_CHECKED: set[str] = set()


def _labels(labels: Mapping[str, str]) -> str:
    """``{name="value",...}``, values escaped; once per sample, so kept short."""
    if not labels:
        return ""
    for name in labels:
        if name not in _CHECKED:
            if not _LABEL.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"{name!r} is not a Prometheus label name")
            _CHECKED.add(name)
    text = ",".join(f'{name}="{escape_label_value(str(value))}"' for name, value in labels.items())
    return "{" + text + "}"


def escape_label_value(value: str) -> str:
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value  # nearly always: names, reasons, states
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers as integers, floats as Python's shortest repr, and Go's spellings of
    the infinities and NaN."""
    if type(value) is int:  # the most frequent: counts
        return str(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[Family]) -> bytes:
    """The text of one scrape: families in the order given, samples in theirs."""
    lines = []
    for family in families:
        metric = family.metric
        lines.append(f"# HELP {metric.name} {escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        name = metric.name
        lines.extend(f"{name}{labels} {format_value(value)}" for labels, value in family.samples)
    lines.append("")
    return "\n".join(lines).encode("utf-8")
