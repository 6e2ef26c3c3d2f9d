"""What the hub needs from the world before its config is applied: the state folder, secrets
from the environment or files, the identity provider's discovery document, the runbooks mirror.

These are the only side effects of start-up; `opshub.configure` stays pure.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .accounts import PERSON_PREFIX, unreadable_by_others
from .configure import Runtime
from .configure.services import database_url
from .configure.spawner import homes_dir, local_accounts
from .contract import SYSTEM_ACCOUNTS
from .deployments import CLAIMS_DIR, account_processes, accounts_claim, claim_system_accounts, deployment_id
from .runbooks.mirror import MirrorError, mirror
from .settings import OAUTH_PROVIDERS, PACKAGE_DIR, Settings, SettingsError, public_url, repository_url

DEMO_PASSWORD_FILE = "demo-password"
METRICS_TOKEN_FILE = "metrics-token"
ALERTS_TOKEN_FILE = "alerts-token"
MIN_PASSWORD_LENGTH = 8  # what JupyterHub's SharedPasswordAuthenticator requires
DISCOVERY_TIMEOUT = 10  # seconds


def secret_from_env_or_state(settings: Settings, variable: str, file_name: str, nbytes: int) -> tuple[str, str]:
    """A secret from $variable, else generated once into the state folder (mode 0600).
    Returns the value and where it came from."""
    value = os.environ.get(variable)
    if value:
        return value, f"${variable}"
    file = settings.state_dir / file_name
    if not file.exists():
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes) + "\n")
    return file.read_text().strip(), str(file)


def demo_password(settings: Settings) -> tuple[str, str]:
    """The shared demo password and where it came from (the environment, or a file generated once)."""
    variable = settings["auth"]["shared_password"]["password_env"]
    value, source = secret_from_env_or_state(settings, variable, DEMO_PASSWORD_FILE, 12)
    if len(value) < MIN_PASSWORD_LENGTH:
        problem = f"{variable}: the shared password must be at least {MIN_PASSWORD_LENGTH} characters, not {len(value)}"
        raise SettingsError(f"${variable}", [problem])
    return value, source


def metrics_token(settings: Settings) -> tuple[str, str]:
    """The bearer token Prometheus must send for /services/opshub/metrics, and where it came from."""
    return secret_from_env_or_state(settings, settings["history"]["metrics_token_env"], METRICS_TOKEN_FILE, 32)


def alerts_token(settings: Settings) -> tuple[str, str]:
    """The bearer token Alertmanager must send to the receiver, and where it came from."""
    return secret_from_env_or_state(settings, settings["runner"]["alerts_token_env"], ALERTS_TOKEN_FILE, 32)


def client_secret(settings: Settings) -> str:
    """The OAuth client secret, from the environment variable or file the settings name."""
    provider = settings["auth"]["provider"]
    section = settings["auth"][provider]
    if section.get("client_secret_env"):
        variable = section["client_secret_env"]
        value = os.environ.get(variable, "")
        if not value:
            raise SettingsError(
                settings.source, [f"auth.{provider}.client_secret_env: the environment variable {variable} is not set"]
            )
        return value
    path = Path(section["client_secret_file"])
    try:
        value = path.read_text().strip()
    except OSError as e:
        raise SettingsError(
            settings.source, [f"auth.{provider}.client_secret_file: cannot read {path}: {e.strerror}"]
        ) from None
    if not value:
        raise SettingsError(settings.source, [f"auth.{provider}.client_secret_file: {path} is empty"])
    return value


class IssuerUnreachable(SettingsError):
    """The OIDC issuer's discovery document could not be read (the provider is down, restarting, or
    not reachable from here): something that may pass by itself, unlike a wrong document."""


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def endpoints_from_document(issuer: str, document, given: dict[str, str]) -> dict[str, str]:
    """authorize, token and userinfo URLs: those `given` (the settings' overrides), else the discovery
    document's. ValueError, naming the settings key, when the document is not the issuer's or lacks one."""
    url = discovery_url(issuer)
    if not isinstance(document, dict):
        raise ValueError(f"auth.oidc.issuer: the discovery document at {url} is not a JSON object")
    if str(document.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise ValueError(
            f"auth.oidc.issuer: the discovery document at {url} names the issuer {document.get('issuer')!r} instead"
        )
    discovered = {
        "authorize_url": document.get("authorization_endpoint", ""),
        "token_url": document.get("token_endpoint", ""),
        "userinfo_url": document.get("userinfo_endpoint", ""),
    }
    missing = [key for key, value in discovered.items() if not value and not given.get(key)]
    if missing:
        raise ValueError(
            f"auth.oidc: the discovery document at {url} has no {', '.join(missing)}; set them in the settings"
        )
    return {key: given.get(key) or discovered[key] for key in discovered}


def check_issuer(settings: Settings) -> dict[str, str]:
    """authorize, token and userinfo URLs: the settings' overrides, else the discovery document.
    IssuerUnreachable when the document cannot be read, SettingsError when it is not usable: what
    `opshub config validate` reports, naming `auth.oidc.issuer`."""
    oidc = settings["auth"]["oidc"]
    given = {key: oidc[key] for key in ("authorize_url", "token_url", "userinfo_url")}
    if all(given.values()):
        return given
    url = discovery_url(oidc["issuer"])
    try:
        with urllib.request.urlopen(url, timeout=DISCOVERY_TIMEOUT) as response:
            document = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise IssuerUnreachable(
            settings.source,
            [f"auth.oidc.issuer: could not read the discovery document {url}: {getattr(e, 'reason', e)}"],
        ) from None
    try:
        return endpoints_from_document(oidc["issuer"], document, given)
    except ValueError as e:
        raise SettingsError(settings.source, [str(e)]) from None


def oidc_endpoints(settings: Settings) -> dict[str, str]:
    """What the hub starts with: `check_issuer`'s endpoints, or, when the provider cannot be reached
    (a Keycloak restarting), only the settings' overrides. The hub starts anyway, and its
    authenticator (opshub.auth) reads the discovery document at the next login instead."""
    try:
        return check_issuer(settings)
    except IssuerUnreachable as e:
        print(
            f"opshub: warning: {e.problems[0]}. The hub starts anyway: logging in says the identity"
            " provider cannot be reached until it answers, then works with no restart.",
            file=sys.stderr,
            flush=True,
        )
        oidc = settings["auth"]["oidc"]
        return {key: oidc[key] for key in ("authorize_url", "token_url", "userinfo_url")}


def check_database(settings: Settings, password: str | None) -> None:
    """The run history's database answers with the settings' password: a wrong one stops the hub at
    start with the database's own words, before anything listens (a service that cannot record would
    otherwise take the hub down after the proxy started, or lose every run)."""
    url = database_url(settings)
    if url.startswith("sqlite:"):
        return  # a file in the state folder, made by the service
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(make_url(url).set(password=password) if password else url, pool_pre_ping=False)
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        variable = settings["history"]["database_password_env"]
        hint = f" (the password comes from ${variable})" if variable else ""
        raise SettingsError(
            settings.source,
            [f"history.database_url: cannot open {make_url(url).render_as_string(hide_password=True)}{hint}: {reason}"],
        ) from None
    finally:
        engine.dispose()


def check_accounts(settings: Settings, runtime: Runtime) -> None:
    """The local kind's accounts can work here: root for per-person accounts, never servers as
    root, and everything those accounts must read (the Python environment, opshub, the runbooks
    repository) readable by them while the state folder is not theirs."""
    if settings["spawner"]["kind"] != "local":
        return
    accounts = local_accounts(settings, runtime)
    key = "spawner.local.accounts"
    if accounts == "shared" and runtime.as_root:
        raise SettingsError(
            settings.source,
            [f"{key}: shared would run every server as root, and servers never run as root;"
             " use per-person (or auto), or start opshub as a normal user for a single-person trial"],
        )  # fmt: skip
    if accounts == "shared":
        homes_dir(settings, runtime).mkdir(parents=True, exist_ok=True)
        return
    if not runtime.as_root:
        raise SettingsError(
            settings.source,
            [f"{key}: per-person accounts need the hub to run as root (to create accounts and start"
             " servers as them); start it as root, or use auto for a single-account trial"],
        )  # fmt: skip
    homes = homes_dir(settings, runtime)
    if homes.resolve().is_relative_to(settings.state_dir.resolve()):
        raise SettingsError(
            settings.source,
            [f"spawner.local.homes_dir: {homes} is inside hub.state_dir, which only the hub's account may enter"],
        )
    homes.mkdir(parents=True, exist_ok=True)
    if homes.stat().st_mode & stat.S_IWOTH:
        # anyone could plant a home (or a link in its place) for the hub to hand over as root
        raise SettingsError(
            settings.source, [f"spawner.local.homes_dir: {homes} is writable by every account; make it 0755"]
        )
    needed = {
        "the Python environment": Path(runtime.python),
        "its standard library": Path(os.__file__),
        "opshub's own files": PACKAGE_DIR,
        "homes_dir": homes,
    }
    if repository_url(settings).startswith("file://"):
        repository = Path(settings["runbooks"]["repository"])
        if repository.resolve().is_relative_to(settings.state_dir.resolve()):
            raise SettingsError(
                settings.source,
                [f"runbooks.repository: {repository} is inside hub.state_dir, which people's accounts"
                 " cannot enter; keep it beside the state folder (the embedded default uses runbooks.git)"],
            )  # fmt: skip
        if repository.exists():
            needed["runbooks.repository"] = repository
    for what, path in needed.items():
        closed = unreadable_by_others(path)
        if closed is not None:
            raise SettingsError(
                settings.source,
                [f"{key}: people's accounts cannot read {what} ({path}): {closed} is closed to other"
                 " accounts. Install opshub where everyone can read it (such as /opt/opshub, with the"
                 " virtualenv made from /usr/bin/python3: `make install` does so as root), or"
                 f" open {closed} (chmod o+rx)"],
            )  # fmt: skip


def claim_accounts(settings: Settings, runtime: Runtime, claims_dir: Path | None = None) -> None:
    """Per-person accounts are this machine's, the same names for every deployment: claim them for
    this one while its hub runs (opshub.deployments); AccountsClaimed, naming the deployment that
    holds them, when another one's hub is running."""
    if settings["spawner"]["kind"] != "local" or local_accounts(settings, runtime) != "per-person":
        return  # containers, pods and the single-account trial share no account with another deployment
    prefix = settings["spawner"]["local"]["account_prefix"]
    accounts = ", ".join([f"{prefix}{PERSON_PREFIX}<name>", *(prefix + name for name in SYSTEM_ACCOUNTS)])
    claims_dir = claims_dir or CLAIMS_DIR  # read now: tests point it at a folder of their own
    names = {prefix + name for name in SYSTEM_ACCOUNTS}

    def is_account(name: str) -> bool:
        return name in names or name.startswith(prefix + PERSON_PREFIX)

    claim_system_accounts(
        settings.state_dir,
        public_url(settings.data),
        settings.source,
        accounts,
        claims_dir,
        accounts_claim(prefix),
        still_running=lambda: account_processes(is_account),
    )


def prepare(settings: Settings) -> Runtime:
    """Create the state folder and gather what the apply functions need; SettingsError if anything is off."""
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)  # holds the database, cookie secret and demo password: the hub's account only
    docker = settings["spawner"]["docker"]
    in_containers = settings["spawner"]["kind"] == "docker"
    if in_containers and not docker["runbooks_volume"] and repository_url(settings).startswith("file://"):
        # the users' containers would find no runbooks: say so at start, not at every spawn
        problem = (
            f"spawner.docker.runbooks_volume: runbooks.repository {settings['runbooks']['repository']} is a path"
            " the users' containers cannot see; name the volume that holds it, or use a git URL they reach"
        )
        raise SettingsError(settings.source, [problem])
    provider = settings["auth"]["provider"]
    found: dict = {
        "metrics_token": metrics_token(settings)[0],
        "alerts_token": alerts_token(settings)[0],
        "deployment_id": deployment_id(state),  # people's servers keep their spools per deployment
    }
    password_env = settings["history"]["database_password_env"]
    if password_env:
        if not os.environ.get(password_env):
            raise SettingsError(
                settings.source, [f"history.database_password_env: the environment variable {password_env} is not set"]
            )
        found["database_password"] = os.environ[password_env]
    check_database(settings, found.get("database_password"))
    if provider == "shared-password":
        found["demo_password"] = demo_password(settings)[0]
    if provider in OAUTH_PROVIDERS:
        found["client_secret"] = client_secret(settings)
    if provider == "oidc":
        found["oidc_endpoints"] = oidc_endpoints(settings)
    runbooks = settings["runbooks"]
    if runbooks["mirror_from"]:
        try:
            mirror(runbooks["mirror_from"], runbooks["repository"], runbooks["branch"])
        except MirrorError as e:
            raise SettingsError(settings.source, [f"runbooks.mirror_from: {e}"]) from None
    runtime = Runtime.of_this_machine(**found)
    check_accounts(settings, runtime)
    claim_accounts(settings, runtime)  # last: a refused start leaves no claim behind
    return runtime
