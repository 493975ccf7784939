"""Istio's bookinfo ``reviews`` rules, as its documentation writes them, for meshctl's
tests: a DestinationRule with subsets v1/v2/v3 and a VirtualService sending the user
jason to v2 and everyone else 80/20 to v1/v3."""

from __future__ import annotations

REVIEWS_DESTINATION_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
"""

REVIEWS_VIRTUAL_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
    - destination:
        host: reviews
        subset: v3
      weight: 20
"""

REVIEWS_VIRTUAL_SERVICE_90 = REVIEWS_VIRTUAL_SERVICE.replace("weight: 80", "weight: 70")
"""The same VirtualService with weights summing to 90: meshd must reject it."""

REVIEWS_VIRTUAL_SERVICE_ALL_V1 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
"""
