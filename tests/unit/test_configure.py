"""Each apply function against a bare traitlets Config: settings in, traits out, nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from opshub.configure import (
    Runtime,
    apply_all,
    apply_auth,
    apply_hub,
    apply_pages,
    apply_roles,
    apply_services,
    apply_spawner,
)
from opshub.configure.hub import PROXY_GUARD
from opshub.configure.pages import TEMPLATES, landing_page
from opshub.settings import EMBEDDED_SETTINGS, load_settings
from tornado import web
from traitlets.config import Config

RUNTIME = Runtime(python="/opt/opshub/bin/python", proxy_command=["/opt/chp"], demo_password="correct-horse")


@pytest.fixture
def settings(tmp_path):
    return load_settings(EMBEDDED_SETTINGS, cwd=tmp_path)


def test_hub_section(settings, tmp_path):
    c = Config()
    apply_hub(c, settings, RUNTIME)
    assert c.JupyterHub.bind_url == "http://127.0.0.1:8000/"
    assert c.JupyterHub.hub_bind_url == "http://127.0.0.1:8001"
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:8002"
    # the proxy's own command, run by node behind the guard that answers malformed URL escapes 400
    # (the guard itself is attacked through a live proxy: tests/integration/test_bounded_input.py)
    assert c.ConfigurableHTTPProxy.command == ["node", "--input-type=module", "--eval", PROXY_GUARD, "/opt/chp"]
    assert c.JupyterHub.db_url == f"sqlite:///{tmp_path / 'state' / 'jupyterhub.sqlite'}"
    assert c.JupyterHub.cookie_secret_file == str(tmp_path / "state" / "jupyterhub_cookie_secret")


def test_hub_section_follows_port_and_base_url(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(EMBEDDED_SETTINGS.read_text().replace("port: 8000", "port: 18765\n  base_url: /ops/"))
    c = Config()
    apply_hub(c, load_settings(path, cwd=tmp_path), RUNTIME)
    assert c.JupyterHub.bind_url == "http://127.0.0.1:18765/ops/"
    assert c.JupyterHub.hub_bind_url == "http://127.0.0.1:18766"


def test_shared_password_auth(settings):
    c = Config()
    apply_auth(c, settings, RUNTIME)
    assert c.JupyterHub.authenticator_class.endswith("SharedPasswordAuthenticator")
    assert c.SharedPasswordAuthenticator.user_password == "correct-horse"
    assert c.Authenticator.allowed_users == {"alice", "bob", "carol"}
    assert c.JupyterHub.load_groups == {
        "ops-leads": {"users": ["alice"]},
        "ops-authors": {"users": ["alice"]},
        "ops": {"users": ["bob"]},
        "management": {"users": ["carol"]},
    }


def test_allowed_groups_limit_who_logs_in(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(EMBEDDED_SETTINGS.read_text().replace("auth:\n", "auth:\n  allowed_groups: [ops, ops-leads]\n"))
    c = Config()
    apply_auth(c, load_settings(path, cwd=tmp_path), RUNTIME)
    assert c.Authenticator.allowed_users == {"alice", "bob"}


def test_roles_give_servers_only_to_roles_that_may_have_one(settings):
    c = Config()
    apply_roles(c, settings)
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert "self" not in roles["user"]["scopes"]  # the default role every user gets
    assert not any(s.startswith(("servers", "access:servers")) for s in roles["user"]["scopes"])
    assert roles["admin"]["groups"] == ["ops-leads"]
    assert roles["opshub-author"]["groups"] == ["ops-authors"] and "self" in roles["opshub-author"]["scopes"]
    assert roles["opshub-operator"]["groups"] == ["ops"] and "self" in roles["opshub-operator"]["scopes"]
    assert roles["opshub-viewer"]["groups"] == ["management"]
    assert not any(s.startswith(("self", "servers", "access:servers")) for s in roles["opshub-viewer"]["scopes"])


def test_roles_decide_who_reads_records_and_deletes_runs(settings):
    c = Config()
    apply_roles(c, settings)
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    read, record, delete = "access:services!service=opshub", "custom:opshub:runs:record", "custom:opshub:runs:delete"
    for role in ["opshub-admin", "opshub-author", "opshub-operator", "opshub-viewer"]:
        assert read in roles[role]["scopes"], role
    for role in ["opshub-author", "opshub-operator"]:
        assert f"{record}!user" in roles[role]["scopes"], role  # only as themselves
        assert delete not in roles[role]["scopes"], role
    assert not any(s.startswith(record) for s in roles["opshub-viewer"]["scopes"])
    assert delete in roles["opshub-admin"]["scopes"] and roles["opshub-admin"]["groups"] == ["ops-leads"]


def test_local_spawner_pulls_runbooks_on_start(settings, tmp_path):
    c = Config()
    apply_spawner(c, settings, RUNTIME)
    assert c.JupyterHub.spawner_class.endswith("SimpleLocalProcessSpawner")
    assert c.SimpleLocalProcessSpawner.home_dir_template == str(tmp_path / "state" / "homes" / "{username}")
    assert c.Spawner.cmd == ["/opt/opshub/bin/python", "-m", "opshub.singleuser"]
    assert c.Spawner.default_url == "/lab"
    assert c.Spawner.environment == {
        "OPSHUB_RUNBOOKS_REPO": (tmp_path / "runbooks.git").as_uri(),
        "OPSHUB_RUNBOOKS_BRANCH": "main",
        "OPSHUB_RUNBOOKS_TARGET": "runbooks",
        "OPSHUB_ALLOWED_PULL_REPOS": "",
        "OPSHUB_SERVICE_URL": "http://127.0.0.1:8003/services/opshub/",
        "OPSHUB_PUBLIC_URL": "http://127.0.0.1:8000/",  # links printed in terminals are clickable
        "OPSHUB_SECRET_NAMES": "",
        "OPSHUB_INTERACTIVE_IDLE_MINUTES": "60",
        "OPSHUB_RECORD_OUTSIDE_RUNBOOKS": "false",
        "PATH": f"/opt/opshub/bin:{RUNTIME.path}",  # `opshub` typed in a terminal
    }
    # the server's own token may record runs as its owner, and nothing more than JupyterHub's default
    person, system = (
        SimpleNamespace(user=SimpleNamespace(name="bob")),
        SimpleNamespace(user=SimpleNamespace(name="opshub-dashboards")),
    )
    assert c.Spawner.server_token_scopes(system) == ["access:servers!server"]
    assert c.Spawner.server_token_scopes(person) == [
        "users:activity!user",
        "access:servers!server",
        "access:services!service=opshub",
        "custom:opshub:runs:record!user",
        "custom:opshub:dashboards:publish!user",
        "custom:opshub:runs:request!user",
    ]


def test_system_accounts_servers_run_their_own_program_with_only_what_it_needs(settings):
    c = Config()
    apply_spawner(c, settings, RUNTIME)
    dashboards = SimpleNamespace(user=SimpleNamespace(name="opshub-dashboards"), name="", cmd=None, environment=None)
    c.Spawner.pre_spawn_hook(dashboards)
    assert dashboards.cmd == ["/opt/opshub/bin/python", "-I", "-m", "opshub.dashboards_backend"]
    assert set(dashboards.environment) == {
        "OPSHUB_DASHBOARDS_BASE_URL", "OPSHUB_DASHBOARDS_POOL_SIZE", "OPSHUB_DASHBOARDS_CULL_IDLE",
        "OPSHUB_SERVICE_URL", "PATH", "OPSHUB_SANDBOX",
    }  # fmt: skip
    assert dashboards.environment["OPSHUB_SANDBOX"] == "bubblewrap"  # each dashboard's kernels sealed
    assert dashboards.environment["OPSHUB_DASHBOARDS_BASE_URL"] == "/services/opshub/dashboards/-/"
    person = SimpleNamespace(user=SimpleNamespace(name="bob"), name="", cmd=None, environment=None)
    c.Spawner.pre_spawn_hook(person)
    assert person.cmd is None and person.environment is None  # people's servers: the common config


def test_the_runner_runs_named_servers_with_its_credentials_files_and_people_get_none(settings):
    granted = {"SSH_KEY": {"file": "/etc/opshub/runner/id_ed25519", "runbooks": ["patch-*.ipynb"]}}
    settings["runner"]["credentials"] = granted
    c = Config()
    apply_spawner(c, settings, RUNTIME)
    assert c.JupyterHub.allow_named_servers is True
    run = SimpleNamespace(user=SimpleNamespace(name="opshub-runner"), name="0b0e", cmd=None, environment=None)
    c.Spawner.pre_spawn_hook(run)
    assert run.cmd == ["/opt/opshub/bin/python", "-I", "-m", "opshub.runner"]  # isolated: no planted module
    assert json.loads(run.environment["OPSHUB_RUNNER_CREDENTIALS"]) == granted
    assert run.environment["OPSHUB_SANDBOX"] == "bubblewrap"
    assert c.Spawner.server_token_scopes(run) == ["access:servers!server", "users:activity!user"]
    bob_named = SimpleNamespace(user=SimpleNamespace(name="bob"), name="second", cmd=None, environment=None)
    with pytest.raises(web.HTTPError, match="one server") as refused:  # a 4xx, not a 500, should one get there
        c.Spawner.pre_spawn_hook(bob_named)
    assert refused.value.status_code == 403


def test_jupyterhub_refuses_people_s_named_servers_before_creating_them(settings):
    """The named-server limit JupyterHub asks (with the request's handler) before it creates or starts a
    named server: none for the runner, a 403 for anyone else; 0 on pages that name nobody."""
    c = Config()
    apply_spawner(c, settings, RUNTIME)
    limit = c.JupyterHub.named_server_limit_per_user
    for path_args in (["opshub-runner", "run-0b0e"], [], ["opshub-runner", ""]):
        assert limit(SimpleNamespace(path_args=path_args)) == 0
    for path_args in (["bob", "second"], ["alice", "x"], ["opshub-dashboards", "y"], ["bob", ""]):
        with pytest.raises(web.HTTPError, match="cannot have named servers") as refused:
            limit(SimpleNamespace(path_args=path_args))
        assert refused.value.status_code == 403


def test_nobody_logs_in_as_a_system_account(settings):
    from tornado import web

    c = Config()
    apply_auth(c, settings, RUNTIME)
    hook = c.Authenticator.post_auth_hook
    assert hook(None, None, {"name": "bob"}) == {"name": "bob"}
    with pytest.raises(web.HTTPError) as refused:
        hook(None, None, {"name": "opshub-dashboards"})
    assert refused.value.status_code == 403 and "system account" in refused.value.log_message


def test_pages_link_to_a_runbooks_pull(settings, tmp_path):
    c = Config()
    apply_pages(c, settings, RUNTIME)
    assert c.JupyterHub.template_paths == [TEMPLATES]
    assert (Path(TEMPLATES) / "home.html").exists()
    link = urlparse(c.JupyterHub.template_vars["opshub_runbooks_pull_link"])
    assert link.path == "/hub/user-redirect/git-pull"
    assert parse_qs(link.query) == {
        "repo": [(tmp_path / "runbooks.git").as_uri()],
        "branch": ["main"],
        "targetpath": ["runbooks"],
        "urlpath": ["lab/tree/runbooks"],
    }
    assert c.JupyterHub.default_url is landing_page
    assert c.JupyterHub.template_vars["opshub_demo_team"] == "alice (admin, author), bob (operator), carol (viewer)"


def test_services_run_history_always_and_mirror_when_mirroring(settings, tmp_path):
    c = Config()
    apply_services(c, settings, RUNTIME)
    history, mirror = c.JupyterHub.services
    assert history["name"] == "opshub" and history["url"] == "http://127.0.0.1:8003"
    assert history["command"][:3] == ["/opt/opshub/bin/python", "-m", "opshub.service"]
    document = json.loads(history["command"][history["command"].index("--settings") + 1])
    assert document["service"]["database_url"] == f"sqlite:///{tmp_path / 'state' / 'opshub.sqlite'}"
    assert set(c.JupyterHub.custom_scopes) == {
        "custom:opshub:runs:record",
        "custom:opshub:runs:delete",
        "custom:opshub:dashboards:publish",
        "custom:opshub:runs:request",
    }
    assert history["environment"]["OPSHUB_ALERTS_TOKEN"] == ""  # none in RUNTIME: the receiver refuses all
    assert history["environment"]["OPSHUB_METRICS_TOKEN"] == "" and "OPSHUB_DATABASE_PASSWORD" in history["environment"]
    assert mirror["name"] == "runbooks-mirror"
    assert mirror["command"][:3] == ["/opt/opshub/bin/python", "-m", "opshub.runbooks.mirror"]
    assert str(tmp_path / "shared-notebooks") in mirror["command"]

    path = tmp_path / "s.yaml"
    path.write_text(EMBEDDED_SETTINGS.read_text().replace("mirror_from: shared-notebooks", "mirror_from: ''"))
    c = Config()
    apply_services(c, load_settings(path, cwd=tmp_path), RUNTIME)
    assert [s["name"] for s in c.JupyterHub.services] == ["opshub"]


def test_apply_all_is_pure(settings):
    first, second = Config(), Config()
    apply_all(first, settings, RUNTIME)
    apply_all(second, settings, RUNTIME)
    assert first == second
    # it only sets: applying twice to the same config changes nothing
    apply_all(first, settings, RUNTIME)
    assert first == second


def docker_server(user: str, name: str = "", user_options=None) -> SimpleNamespace:
    server = SimpleNamespace(user=SimpleNamespace(name=user), name=name, cmd=None, environment=None, volumes=None)
    if user_options is not None:
        server.user_options = user_options
    return server


def test_in_docker_a_runs_container_mounts_only_the_credentials_granted_to_its_runbook(settings):
    """The service names the run's runbook when it asks for the server (user_options); the hook mounts,
    read-only at each `file`, the `docker_source` of exactly the credentials granted to it. Another
    runbook gets none of them, a server started without a runbook none at all, and people's containers
    keep the deployment's volumes, with no credential."""
    settings["spawner"]["kind"] = "docker"
    settings["spawner"]["docker"]["volumes"] = {"/srv/shared-ca": "/etc/ssl/team-ca:ro"}
    settings["runner"]["credentials"] = {
        "SSH_KEY": {
            "file": "/run/opshub-credentials/ssh-key",
            "runbooks": ["patch-*.ipynb", "patching/*"],
            "docker_source": "/srv/opshub/credentials/ssh-key",
        },
        "CLOUD_TOKEN": {
            "file": "/run/opshub-credentials/cloud-token",
            "runbooks": ["cloud/*"],
            "docker_source": "/srv/opshub/credentials/cloud-token",
        },
        "DB_PASSWORD": {"file": "/run/opshub-credentials/db", "runbooks": ["patch-*.ipynb"]},  # none to mount
    }
    c = Config()
    apply_spawner(c, settings, RUNTIME)
    hook = c.Spawner.pre_spawn_hook
    shared = {"/srv/shared-ca": {"bind": "/etc/ssl/team-ca", "mode": "ro"}}
    ssh_key = {"/srv/opshub/credentials/ssh-key": {"bind": "/run/opshub-credentials/ssh-key", "mode": "ro"}}
    cloud = {"/srv/opshub/credentials/cloud-token": {"bind": "/run/opshub-credentials/cloud-token", "mode": "ro"}}

    def mounted(server):
        hook(server)
        return server.volumes

    assert mounted(docker_server("opshub-runner", "run-1", {"runbook": "patch-server-stack.ipynb"})) == {
        **shared,
        **ssh_key,
    }
    assert mounted(docker_server("opshub-runner", "run-2", {"runbook": "patching/web/rolling.ipynb"})) == {
        **shared,
        **ssh_key,
    }
    assert mounted(docker_server("opshub-runner", "run-3", {"runbook": "cloud/rotate.ipynb"})) == {**shared, **cloud}
    # another runbook, a look-alike, no runbook, no user_options at all: no credential
    assert mounted(docker_server("opshub-runner", "run-4", {"runbook": "host-health-check.ipynb"})) == shared
    assert mounted(docker_server("opshub-runner", "run-5", {"runbook": "PATCH-server-stack.ipynb"})) == shared
    assert mounted(docker_server("opshub-runner", "run-6", {})) == shared
    assert mounted(docker_server("opshub-runner", "run-7", {"runbook": ["patch-server-stack.ipynb"]})) == shared
    assert mounted(docker_server("opshub-runner", "run-8", None)) == shared
    # the hook's own dict is never changed by a run's mounts: the next run starts from the shared ones
    assert mounted(docker_server("opshub-runner", "run-9", {"runbook": "x.ipynb"})) == shared
    # people's servers and the dashboards server: DockerSpawner's volumes as configured, untouched
    for user in ("bob", "opshub-dashboards"):
        person = docker_server(user, "", {"runbook": "patch-server-stack.ipynb"})
        hook(person)
        assert person.volumes is None, user
    people = c.DockerSpawner.volumes
    assert not [source for source in people if "credentials" in source], people


def test_a_credential_s_docker_source_is_a_host_path_and_errors_name_the_key(tmp_path):
    import yaml
    from opshub.settings import SettingsError, validate

    data = yaml.safe_load(Path(EMBEDDED_SETTINGS).read_text())
    base = {"SSH_KEY": {"file": "/run/opshub-credentials/ssh-key", "runbooks": ["*"]}}
    data.setdefault("runner", {})["credentials"] = base
    filled = validate(data, cwd=tmp_path)
    assert filled["runner"]["credentials"]["SSH_KEY"].get("docker_source", "") == ""
    base["SSH_KEY"]["docker_source"] = "relative/ssh-key"
    with pytest.raises(SettingsError, match=r"runner\.credentials\.SSH_KEY\.docker_source"):
        validate(data, cwd=tmp_path)


def test_the_service_gets_the_notifications_section_its_links_url_and_the_targets_variables(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    data = yaml.safe_load(EMBEDDED_SETTINGS.read_text())
    data["hub"]["public_url"] = "https://ops.example.com/"
    data["notifications"] = {"targets": {"chat": {"url_env": "OPSHUB_NOTIFY_CHAT"}}, "rules": [{"to": ["chat"]}]}
    path.write_text(yaml.safe_dump(data))
    settings = load_settings(path, cwd=tmp_path)
    c = Config()
    apply_services(c, settings, RUNTIME)
    command = c.JupyterHub.services[0]["command"]
    document = json.loads(command[command.index("--settings") + 1])
    section = document["notifications"]
    assert section == settings["notifications"] and section["targets"] == {"chat": {"url_env": "OPSHUB_NOTIFY_CHAT"}}
    assert document["service"]["public_url"] == "https://ops.example.com/"
    # the URL (a secret) is the hub's own variable, read when JupyterHub starts the service
    variable = c.JupyterHub.services[0]["environment"]["OPSHUB_NOTIFY_CHAT"]
    monkeypatch.setenv("OPSHUB_NOTIFY_CHAT", "json://127.0.0.1:9/hook")
    assert variable(None) == "json://127.0.0.1:9/hook"
    assert json.loads(json.dumps(variable)) == "OPSHUB_NOTIFY_CHAT"  # what the hub's database keeps: the name
    assert "json://" not in json.dumps(command)
    second = Config()
    apply_services(second, settings, RUNTIME)
    assert second == c  # still pure
