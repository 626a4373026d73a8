"""What an operator sees of a running mediagen: Prometheus metrics (`metrics`), structured logs
that carry request and job ids (`logs`), OpenTelemetry traces (`tracing`), and error reports
to Sentry (`sentry`).

`context` holds the request and job ids every log line and outgoing task message carries.
"""
