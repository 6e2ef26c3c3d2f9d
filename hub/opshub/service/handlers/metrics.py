"""`/metrics`: the runs' Prometheus exposition (collected by service/metrics.py), for whoever holds the
metrics bearer token (Prometheus' `authorization`)."""

from __future__ import annotations

from jupyterhub.utils import url_path_join
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .base import ServiceHandler


class MetricsHandler(ServiceHandler):
    def get(self):
        self.check_bearer(self.settings["opshub_metrics_token"], "send the metrics bearer token")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.settings["opshub_registry"]))


def metrics_handlers(prefix: str) -> list[tuple]:
    return [(url_path_join(prefix, "metrics"), MetricsHandler)]
