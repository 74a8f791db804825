"""Pages from kept runs: docs/results*.md (``results``, scripts/report.py) and
docs/results-realtime.md (``realtime``, scripts/report_realtime.py)."""
