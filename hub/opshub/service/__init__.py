"""The opshub service, the control plane's own process at /services/opshub/: the run history (store,
migrations, API and pages), its Prometheus metrics, and the published dashboards (registry, pages,
and the relay to the dashboards server). `__main__.py` wires the parts; hub/docs/architecture.md maps them."""
