"""The images `make images` builds (here from Debian packages: no registry is reachable):
every tool of the ops image answers, it runs as non-root with a healthcheck, and the hub
image holds the hub's parts."""

from __future__ import annotations

import json

import pytest

from tests.docker.engine import docker, run_in_ops, source_label

pytestmark = pytest.mark.timeout(2700)  # a fresh machine builds the images in the first test

# tool -> a command that prints its version, and what that output must contain
OPS_TOOLS = {
    "git": ("git --version", "git version"),
    "openssh-client": ("ssh -V", "OpenSSH"),
    "ansible-core": ("ansible --version", "ansible [core"),
    "kubectl": ("kubectl version --client", "Client Version"),
    "jq": ("jq --version", "jq-"),
    "curl": ("curl --version", "curl "),
    "awscli": ("aws --version", "aws-cli/"),
    "terraform": ("terraform version", "Terraform v"),
    "python": ("python --version", "Python 3."),
    "jupyterlab": ("jupyter lab --version", "4."),
    "jupyterhub-singleuser": ("jupyterhub-singleuser --version", "6."),
    "voila": ("voila --version", "0."),
    "papermill": ("papermill --version", "papermill"),
    "nbgitpuller": (
        "python -c 'import nbgitpuller; print(\"nbgitpuller\", nbgitpuller.__version__)'",
        "nbgitpuller 1.",
    ),
    "ipywidgets": ("python -c 'import ipywidgets; print(\"ipywidgets\", ipywidgets.__version__)'", "ipywidgets 8."),
    "ipykernel": ("python -m ipykernel --version", "."),
    "bash_kernel": ("python -c 'import bash_kernel; print(\"bash_kernel\", bash_kernel.__version__)'", "bash_kernel"),
    "opshub": ("opshub run --help", "usage: opshub run"),
}


@pytest.fixture(scope="module")
def tool_versions(images):
    """Every tool's version command, run in one container of the ops image."""
    marker = "=== opshub-test:"
    script = "; ".join(f"echo '{marker}{name}'; {cmd} 2>&1; echo \"rc=$?\"" for name, (cmd, _) in OPS_TOOLS.items())
    result = run_in_ops("bash", "-c", script)
    assert result.returncode == 0, result.stderr
    outputs = {}
    for chunk in result.stdout.split(marker)[1:]:
        name, _, output = chunk.partition("\n")
        outputs[name] = output
    return outputs


@pytest.mark.parametrize("tool", OPS_TOOLS)
def test_ops_tool_answers_version(tool_versions, tool):
    output = tool_versions[tool]
    assert output.rstrip().endswith("rc=0"), f"{tool}: {output}"
    assert OPS_TOOLS[tool][1] in output, f"{tool}: {output}"


def test_ops_image_runs_as_non_root_with_a_healthcheck(images):
    config = json.loads(docker("image", "inspect", images["ops"]).stdout)[0]["Config"]
    assert config["User"] == "1000"
    assert config["Healthcheck"]["Test"][0] == "CMD-SHELL" and "curl" in config["Healthcheck"]["Test"][1]
    assert config["Cmd"] == ["python", "-m", "opshub.singleuser"]
    result = run_in_ops("bash", "-c", "id -u; id -un; echo $HOME; touch $HOME/x && echo home-writable")
    assert result.stdout.split() == ["1000", "ops", "/home/ops", "home-writable"], result.stdout + result.stderr
    # no way to root inside: there is no sudo (DockerSpawner adds no-new-privileges on top)
    assert run_in_ops("bash", "-c", "command -v sudo").returncode != 0


def test_both_images_carry_the_same_opshub(images):
    """images/build.sh builds both images from one snapshot of the sources and labels each with its
    digest (up.sh refuses a pair that differs): an ops image built before an edit and a hub image built
    after it served no live dashboard (the service asked for a layout the dashboards server did not have)."""
    sources = {name: source_label(image) for name, image in images.items()}
    assert sources["ops"] and sources["ops"] == sources["hub"], sources


def test_ops_image_has_the_kernels_and_no_news_prompt(images):
    kernels = run_in_ops("jupyter", "kernelspec", "list", "--json")
    assert {"python3", "bash"} <= set(json.loads(kernels.stdout)["kernelspecs"])
    extensions = run_in_ops("jupyter", "labextension", "list")
    assert "@jupyterlab/apputils-extension:announcements" in extensions.stdout + extensions.stderr


def test_ops_image_trusts_the_build_ca(images):
    """The extra CA bundle given to the build (here this machine's) is in the image's trust store."""
    result = run_in_ops("bash", "-c", "ls /usr/local/share/ca-certificates/ | grep -c opshub-extra")
    assert int(result.stdout.strip() or 0) > 0, result.stdout + result.stderr


def test_base_image_was_built_from_debian_packages_when_the_registry_is_unreachable(images):
    """On these machines the pinned base cannot be pulled: the images stand on the debootstrapped one."""
    pinned_present = docker("image", "inspect", "debian:12.8-slim", check=False).returncode == 0
    if pinned_present:
        pytest.skip("the pinned base image is present here: the air-gapped path was not needed")
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}} {{.Comment}}", images["ops"]).stdout
    assert "debootstrap bookworm minbase" in history


def test_hub_image_has_the_hub_side(images):
    # `|| exit 1`: a missing part fails the container; then opshub's answer, with its own exit code
    result = docker(
        "run", "--rm", images["hub"], "bash", "-c",
        "configurable-http-proxy --version && python -c 'import jupyterhub, dockerspawner, kubespawner, "
        "oauthenticator, jupyterhub_idle_culler, opshub.service; print(jupyterhub.__version__)' || exit 1; "
        "opshub config validate /srv/none.yaml; echo \"validate-rc=$?\"",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split()
    assert lines[0].startswith("5.") or lines[0].startswith("4."), result.stdout  # CHP
    assert lines[1].startswith("6."), result.stdout  # JupyterHub, the same major as the ops image's
    # opshub runs in the hub image: it refuses a settings file that is not there, and says why
    assert lines[2] == "validate-rc=1", result.stdout + result.stderr
    assert "cannot read the settings file" in result.stderr, result.stderr
