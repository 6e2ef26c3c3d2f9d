"""Fixtures of the Docker tests: a real Docker Engine (Debian's docker.io, started when none
runs), opshub's images built by `make images` (the air-gapped path here), and `make up`."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.docker.engine import HUB_IMAGE, OPS_IMAGE, docker, running_engine, source_label
from tests.helpers import ARTIFACTS, ROOT, ensure_debian_package


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker Engine to talk to: the one running, else a `dockerd` started for the session."""
    ensure_debian_package("docker.io", "/usr/sbin/dockerd")
    try:
        with running_engine(ARTIFACTS / "dockerd.log"):
            yield
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def images(docker_engine):
    """`make images`: the base image (from Debian packages when the registry cannot be reached;
    kept between runs), then the ops and hub images (Docker's layer cache makes a rebuild quick)."""
    if os.environ.get("OPSHUB_TEST_PREBUILT_IMAGES") == "1":
        # developers iterating on the tests: use the images as they are (CI always builds)
        for image in (OPS_IMAGE, HUB_IMAGE):
            assert docker("image", "inspect", image, check=False).returncode == 0, f"{image} is missing"
        # a pair built from different sources (the tree changed between the two builds) fails in ways
        # far from the cause (live dashboards that never render): say so at once
        sources = {image: source_label(image) for image in (OPS_IMAGE, HUB_IMAGE)}
        assert len(set(sources.values())) == 1 and "" not in sources.values(), (
            f"the images were not built from one source (labels {sources}): run `make images`"
        )
        return {"ops": OPS_IMAGE, "hub": HUB_IMAGE}
    ensure_debian_package("debootstrap", "/usr/sbin/debootstrap")
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "make-images.log", "w") as log:
        result = subprocess.run(["make", "images"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=2400)
    assert result.returncode == 0, f"make images failed; see {ARTIFACTS / 'make-images.log'}"
    return {"ops": OPS_IMAGE, "hub": HUB_IMAGE}


@pytest.fixture(scope="session")
def compose(docker_engine):
    """Debian's docker-compose, which `make up` uses."""
    ensure_debian_package("docker-compose", "/usr/bin/docker-compose")
