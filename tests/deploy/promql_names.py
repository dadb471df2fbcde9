"""Metric names used by PromQL expressions, and the series names a node's /metrics exports.

The dashboard and the alert rules are only as good as the names in their queries: a typo or a
renamed family gives an empty panel or an alert that can never fire, silently. So the deploy
tests pull every metric name out of every expression with the small PromQL tokenizer below
and check it against the families a real node exports (its `# TYPE` lines, so a family counts
even before traffic has given it a labelled series).

The tokenizer knows just enough PromQL to tell metric names from everything else: strings,
label matchers `{...}`, range and subquery selectors `[...]`, Grafana variables, numbers and
durations, function calls, aggregation operators and their `by (...)`/`without (...)` lists,
vector-matching clauses (`on`, `ignoring`, `group_left`, `group_right`) and keywords. What is
left is a metric name, written as it is queried (`x_bucket`, `x_total`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families


class PromQLNameError(ValueError):
    """An expression whose metric names cannot be checked (say which, and why)."""


_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z0-9]*)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<open>[({\[])
    |(?P<close>[)}\]])
    |(?P<operator>==|!=|=~|!~|>=|<=|[-+*/%^<>=,@])
    |(?P<space>\s+)
    """,
    re.VERBOSE,
)

AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
LABEL_LIST_KEYWORDS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
OTHER_KEYWORDS = frozenset(
    ["and", "or", "unless", "bool", "offset", "atan2", "start", "end", "inf", "nan"]
)

# Series that Prometheus writes itself for every target, not the node.
PROMETHEUS_SERIES = frozenset({"up"})


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLNameError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def _skip_group(tokens: list[tuple[str, str]], start: int, expr: str) -> int:
    """Index after the bracket group opening at `start` (the expression is balanced)."""
    depth = 0
    for i in range(start, len(tokens)):
        kind = tokens[i][0]
        depth += (kind == "open") - (kind == "close")
        if depth == 0:
            return i + 1
    raise PromQLNameError(f"unclosed bracket in {expr!r}")


def _check_balanced(tokens: list[tuple[str, str]], expr: str) -> None:
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for kind, text in tokens:
        if kind == "open":
            stack.append(pairs[text])
        elif kind == "close" and (not stack or stack.pop() != text):
            raise PromQLNameError(f"unbalanced {text!r} in {expr!r}")
    if stack:
        raise PromQLNameError(f"unclosed bracket in {expr!r}")


def _check_matchers(tokens: list[tuple[str, str]], expr: str) -> None:
    for kind, text in tokens:
        if kind == "ident" and text == "__name__":
            raise PromQLNameError(
                f"{expr!r} selects by __name__: write the metric name so it can be checked"
            )


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` queries, as written (suffixes such as `_bucket` kept)."""
    tokens = _tokens(expr)
    _check_balanced(tokens, expr)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "open" and text in "{[":
            end = _skip_group(tokens, i, expr)
            _check_matchers(tokens[i:end], expr)
            i = end
        elif kind == "ident" and text in LABEL_LIST_KEYWORDS:
            i = _skip_group(tokens, i + 1, expr) if following == ("open", "(") else i + 1
        elif kind == "ident" and (
            text.lower() in OTHER_KEYWORDS
            or following == ("open", "(")
            or (text in AGGREGATIONS and following[1] in ("by", "without"))
        ):
            i += 1  # a keyword, a function call or an aggregation: its arguments follow
        elif kind == "ident":
            names.add(text)
            i += 1
        else:
            i += 1
    return names


def names_in(expressions: Iterable[str]) -> dict[str, set[str]]:
    """Metric name -> the expressions that use it."""
    used: dict[str, set[str]] = {}
    for expr in expressions:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(expr)
    return used


_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_series_names(exposition: str) -> dict[str, str]:
    """Series name a query may use -> the type of its family, from a /metrics text.

    Read from the families (their `# TYPE` lines), so a counter with no labelled sample yet
    still counts; a histogram `x` exports `x_bucket`, `x_sum` and `x_count`, never `x`.
    """
    exported: dict[str, str] = {}
    for family in text_string_to_metric_families(exposition):
        for suffix in _SERIES_SUFFIXES[family.type]:
            exported[family.name + suffix] = family.type
        for sample in family.samples:
            exported[sample.name] = family.type
    return exported


def unknown_names(expressions: Iterable[str], exposition: str) -> dict[str, set[str]]:
    """Names used by `expressions` that neither the node nor Prometheus itself exports."""
    exported = exported_series_names(exposition)
    return {
        name: exprs
        for name, exprs in names_in(expressions).items()
        if name not in exported and name not in PROMETHEUS_SERIES
    }
