"""The `opshub` command."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from .configure.pages import demo_team
from .settings import (
    PACKAGE_DIR,
    PORT_ENV,
    SETTINGS_ENV,
    Settings,
    SettingsError,
    callback_url,
    load_settings,
    masked,
    public_url,
    render_docs,
    repository_url,
)

HUB_CONFIG = str(PACKAGE_DIR / "jupyterhub_config.py")


def banner(settings: Settings, password: str | None, password_source: str, metrics_token_source: str = "") -> str:
    lines = ["", f"opshub is starting at {public_url(settings.data)}", ""]
    provider = settings["auth"]["provider"]
    if provider == "shared-password":
        lines += [
            f"  Log in as one of: {demo_team(settings)}",
            f"  Shared demo password: {password}",
            f"    (from {password_source})",
            "  This shared password is for TRYING OPSHUB OUT ONLY: use your identity provider for a real team.",
        ]
    else:
        lines += [
            f"  Login through {provider}. Register this callback URL at the provider:",
            f"    {callback_url(settings.data)}",
        ]
    runbooks = settings["runbooks"]
    lines += [
        f"  Runbooks: {repository_url(settings)} ({runbooks['branch']}) -> ~/{runbooks['target']}",
        f"  Run history: {public_url(settings.data)}services/opshub/",
        f"  Prometheus: scrape {public_url(settings.data)}services/opshub/metrics with the bearer token"
        f" from {metrics_token_source}",
        f"  State (database, homes, secrets): {settings.state_dir}",
        "  Stop with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)


def cmd_hub(args) -> int:
    from .startup import demo_password, metrics_token, prepare

    settings = load_settings(args.settings, port=args.port)
    runtime = prepare(settings)
    source = demo_password(settings)[1] if runtime.demo_password else ""
    print(banner(settings, runtime.demo_password, source, metrics_token(settings)[1]), flush=True)
    os.environ[SETTINGS_ENV] = os.path.abspath(settings.source)
    if args.port:
        os.environ[PORT_ENV] = str(args.port)
    os.execv(sys.executable, [sys.executable, "-m", "jupyterhub", "-f", HUB_CONFIG, *args.jupyterhub_args])


def cmd_config_validate(args) -> int:
    settings = load_settings(args.file)
    print(f"{settings.source}: valid")
    return 0


def cmd_config_show(args) -> int:
    settings = load_settings(args.file)
    print(f"# {settings.source}, with defaults filled in and secrets masked")
    print(yaml.safe_dump(masked(settings.data), sort_keys=False), end="")
    return 0


def cmd_config_docs(args) -> int:
    print(render_docs(), end="")
    return 0


def cmd_run(args) -> int:
    from .runbooks.headless import run_runbook

    return run_runbook(args.runbook, args.parameter, output=args.output, runbooks_dir=args.runbooks_dir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opshub", description="opshub: JupyterHub for infrastructure teams.")
    sub = p.add_subparsers(dest="command", required=True)

    hub = sub.add_parser("hub", help="start the hub (proxy, hub, helper services) from a settings file")
    hub.add_argument("--settings", help=f"settings file (default: ${SETTINGS_ENV}, else the embedded default)")
    hub.add_argument("--port", type=int, help="public port, overriding hub.port")
    hub.add_argument("jupyterhub_args", nargs="*", help="extra arguments for jupyterhub (after --)")
    hub.set_defaults(func=cmd_hub)

    config = sub.add_parser("config", help="check and show settings files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    for name, func, text in [
        ("validate", cmd_config_validate, "check a settings file; exit 1 naming each problem"),
        ("show", cmd_config_show, "print the effective settings, defaults filled in, secrets masked"),
    ]:
        c = config_sub.add_parser(name, help=text)
        c.add_argument("file", nargs="?", help=f"settings file (default: ${SETTINGS_ENV}, else the embedded default)")
        c.set_defaults(func=func)
    docs = config_sub.add_parser("docs", help="print the settings reference (Markdown) rendered from the schema")
    docs.set_defaults(func=cmd_config_docs)

    run = sub.add_parser(
        "run",
        help="execute a runbook headless, recorded in the run history",
        description="Execute a runbook headless with papermill, showing progress per cell, and record the run"
        " (parameters and outputs with secrets masked). Exit codes: 0 succeeded, 1 failed, 2 usage error"
        " (nothing ran), 3 the run history could not record the start (nothing ran) or the end,"
        " 130/143 interrupted by SIGINT/SIGTERM.",
    )
    run.add_argument("runbook", help="runbook path inside the runbooks folder, .ipynb optional (net/check)")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a declared parameter; VALUE as papermill's -p (True, None, 3, 1.5, text) or JSON ('[\"a\"]')",
    )
    run.add_argument("--output", help="where to save the executed notebook (default ~/.opshub/runs/RUN_ID.ipynb)")
    run.add_argument("--runbooks-dir", help="runbooks folder (default $HOME/$OPSHUB_RUNBOOKS_TARGET, else ~/runbooks)")
    run.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except SettingsError as e:
        print(f"opshub: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
