"""Monitoring: metrics, traces, logs, alert rules."""
