"""What the gateway tells operators: request logs, Prometheus metrics, OpenTelemetry traces.

Everything here is fed at the end of a request from its `RequestInfo` (record.py), outside the request's critical
section: nothing in this package decides how a request is served."""
