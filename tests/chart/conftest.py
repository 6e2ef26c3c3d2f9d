"""Render the opshub chart (helm/opshub/) with Helm's own template engine, through the Helm library
bundled in PyPI's helm-python-sdk (no helm binary, no cluster). See helm/opshub/README.md for what
this covers and what needs a cluster."""

from __future__ import annotations

import copy

import helm_python as helm
import pytest
import yaml

from tests.helpers import ROOT

CHART = ROOT / "helm" / "opshub"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
DEMO = CHART / "examples" / "demo-values.yaml"
RELEASE, NAMESPACE = "ops", "opshub"
# What an install must add to the chart's defaults (values.schema.json requires both): a team
# (here the demo team of examples/demo-values.yaml) and the runbooks repository.
REPOSITORY = "https://git.example.com/ops/runbooks.git"
MINIMAL = yaml.safe_load(DEMO.read_text())
MINIMAL["jupyterhub"]["custom"]["opshub"]["runbooks"] = {"repository": REPOSITORY}


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values: dict, release: str = RELEASE) -> dict[str, list[dict]]:
    """template path -> the Kubernetes objects it rendered (NOTES.txt and empty templates left out)."""
    rendered = chart.render(copy.deepcopy(values), name=release, namespace=NAMESPACE, is_install=True)
    objects = {}
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        if docs:
            objects[path.rsplit("/", 1)[1]] = docs
    return objects


def all_options() -> dict:
    return yaml.safe_load(ALL_OPTIONS.read_text())
