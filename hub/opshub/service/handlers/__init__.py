"""The opshub service's request handlers, laid out like JupyterHub's: `base.py` (what they all share),
then one module per resource, each exporting its routes as a function of the service's prefix,
which `service/app.py`'s `make_app` composes:

- `runs.py`: the run API (`api/runs...`), what people's servers record through
- `pages.py`: the run history pages
- `metrics.py`: `/metrics` for Prometheus
- `dashboards.py`: the dashboards' API and pages, the relays to the dashboards server, the data API
"""
