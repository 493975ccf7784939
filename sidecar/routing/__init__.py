"""The sidecar's routing core: pure functions over tables compiled from a snapshot.

``compile_table(outbound) -> RouteTable`` once per snapshot, then per request
``route(table, RequestView.from_head(...)) -> RouteDecision`` (:class:`Forward`,
:class:`Redirect`, :class:`DirectResponse` or :class:`NoRoute`), ``pick_cluster``,
``rewritten_target``/``rewritten_authority`` and ``apply_header_ops``. Retry
classification and the retry budget are in :mod:`sidecar.routing.retry`. No I/O, no
clock, no global randomness; nothing here imports trio or pydantic. See docs/routing.md.
"""

from sidecar.routing.request import Headers, RequestView, normalize_path
from sidecar.routing.retry import (
    Failure,
    RetryBudget,
    RetryRule,
    RetryStatus,
    backoff_ms,
    compile_retry,
    decide_retry,
    should_retry,
)
from sidecar.routing.route import (
    pick_cluster,
    rewritten_authority,
    rewritten_target,
    route,
    route_tcp,
)
from sidecar.routing.table import (
    DirectResponse,
    Forward,
    HeaderEdits,
    NoRoute,
    Redirect,
    RouteDecision,
    RouteTable,
    TcpForward,
    WeightedCluster,
    apply_header_ops,
    compile_header_ops,
    compile_table,
)

__all__ = [
    "DirectResponse",
    "Failure",
    "Forward",
    "HeaderEdits",
    "Headers",
    "NoRoute",
    "Redirect",
    "RequestView",
    "RetryBudget",
    "RetryRule",
    "RetryStatus",
    "RouteDecision",
    "RouteTable",
    "TcpForward",
    "WeightedCluster",
    "apply_header_ops",
    "backoff_ms",
    "compile_header_ops",
    "compile_retry",
    "compile_table",
    "decide_retry",
    "normalize_path",
    "pick_cluster",
    "rewritten_authority",
    "rewritten_target",
    "route",
    "route_tcp",
    "should_retry",
]
