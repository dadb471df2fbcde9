"""The PromQL name extraction the dashboard and alert checks rely on."""

import pytest

from tests.deploy.promql_names import (
    PromQLNameError,
    exported_series_names,
    metric_names,
    unknown_names,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job="p2pcache"} == 0', {"up"}),
        (
            'sum by (endpoint) (rate(p2pcache_http_requests_total{job=~"$job"}[$__rate_interval]))',
            {"p2pcache_http_requests_total"},
        ),
        (
            "histogram_quantile(0.99, sum(rate(p2pcache_http_request_duration_seconds_bucket"
            '{endpoint="narinfo", instance=~"${instance}"}[5m])) by (le))',
            {"p2pcache_http_request_duration_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{result="hit"}[5m])) / clamp_min(sum(rate(a_total[5m])), 1)',
            {"a_total"},
        ),
        (
            "b_sum / ignoring(le) group_left(x) b_count > bool 0.5e-3"
            " and on(instance) c offset 1h30m",
            {"b_sum", "b_count", "c"},
        ),
        ('label_replace(d, "dst", "$1 up", "src", "(.*)")', {"d"}),
        ("max_over_time(e[1h:5m]) unless absent(f) or vector(1) * -Inf", {"e", "f"}),
        ('count_values("version", g_info) + topk(3, h) - quantile(0.5, i)', {"g_info", "h", "i"}),
        ("sum without (instance) (j) @ start()", {"j"}),
        ("# a comment is not PromQL in Grafana either: 1", None),
    ],
)
def test_metric_names_keep_only_metric_identifiers(expr, names):
    if names is None:
        with pytest.raises(PromQLNameError, match="cannot read"):
            metric_names(expr)
    else:
        assert metric_names(expr) == names


def test_names_chosen_by_name_label_are_refused():
    with pytest.raises(PromQLNameError, match="__name__"):
        metric_names('{__name__=~"p2pcache_.*"}')


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", "x{a='1'", "x]"])
def test_unbalanced_expressions_are_refused(expr):
    with pytest.raises(PromQLNameError):
        metric_names(expr)


EXPOSITION = """\
# HELP c_total A counter.
# TYPE c_total counter
# HELP h A histogram with no observation yet.
# TYPE h histogram
# HELP g A gauge.
# TYPE g gauge
g 1.0
# HELP v_info Versions.
# TYPE v_info gauge
v_info{version="1"} 1.0
"""


def test_exported_names_follow_each_family_type():
    exported = exported_series_names(EXPOSITION)
    assert {"c_total", "h_bucket", "h_sum", "h_count", "g", "v_info"} <= set(exported)
    assert "h" not in exported  # a histogram is queried through its series
    assert "c" not in exported
    assert exported["h_bucket"] == "histogram"


def test_unknown_names_reports_what_nothing_exports():
    exprs = ["rate(c_total[5m])", "up == 0", "histogram_quantile(0.5, rate(h_bucket[5m]))"]
    assert unknown_names(exprs, EXPOSITION) == {}
    assert unknown_names(["rate(c[5m]) + h"], EXPOSITION) == {
        "c": {"rate(c[5m]) + h"},
        "h": {"rate(c[5m]) + h"},
    }
