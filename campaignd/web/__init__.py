"""The control API, the dashboard and the metrics endpoint (starlette)."""
