"""What an operator sees: per-operation counters and latency (``stats``),
the server's own figures (``server_stats``), Prometheus text export
(``metrics``) and a rate-limited logger for the hot path (``ratelimited_log``).
Nothing here is on the data path's critical section."""
