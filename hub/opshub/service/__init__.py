"""The opshub hub service: run history store (and later its API, pages, metrics and dashboards)."""
