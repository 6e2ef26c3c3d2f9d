"""The `opshub` command."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from .configure.pages import TRIAL_WARNING, demo_team
from .configure.spawner import homes_dir, local_accounts
from .contract import service_prefix
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


def banner(
    settings: Settings, runtime, password: str | None, password_source: str, metrics_token_source: str = ""
) -> str:
    lines = ["", f"opshub is starting at {public_url(settings.data)}", ""]
    if settings["spawner"]["kind"] == "local":
        if local_accounts(settings, runtime) == "shared":
            lines += [f"  !! {TRIAL_WARNING}", ""]
        else:
            lines += [
                f"  Servers run under one system account per person (jupyter-<name>), homes in {homes_dir(settings, runtime)}"
            ]
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
    history = public_url(settings.data).rstrip("/") + service_prefix("/")
    lines += [
        f"  Runbooks: {repository_url(settings)} ({runbooks['branch']}) -> ~/{runbooks['target']}",
        f"  Run history: {history}",
        f"  Prometheus: scrape {history}metrics with the bearer token from {metrics_token_source}",
        f"  State (databases, secrets; the hub's account only): {settings.state_dir}",
        "  Stop with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)


def cmd_hub(args) -> int:
    from .startup import demo_password, metrics_token, prepare

    settings = load_settings(args.settings, port=args.port)
    runtime = prepare(settings)
    source = demo_password(settings)[1] if runtime.demo_password else ""
    print(banner(settings, runtime, runtime.demo_password, source, metrics_token(settings)[1]), flush=True)
    os.environ[SETTINGS_ENV] = os.path.abspath(settings.source)
    if args.port:
        os.environ[PORT_ENV] = str(args.port)
    # JupyterHub, stopped as opshub needs: Ctrl-C stops everything, SIGTERM leaves runs running (hubapp.py)
    os.execv(sys.executable, [sys.executable, "-m", "opshub.hubapp", "-f", HUB_CONFIG, *args.jupyterhub_args])


def cmd_config_validate(args) -> int:
    settings = load_settings(args.file)
    if settings["auth"]["provider"] == "oidc":
        from .startup import check_issuer

        check_issuer(settings)  # an issuer that cannot be reached is a problem here, though the hub starts
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
    from .runbooks.headless import run_runbook, runbook_help
    from .runbooks.params import UsageError

    if args.help or not args.runbook:
        return print_help(args, lambda: runbook_help(args.runbook, args.runbooks_dir), UsageError)

    def open_store(url: str):
        from .service.recorder import StoreRecorder  # the store's imports (SQLAlchemy, alembic) only when asked

        return StoreRecorder(url)

    # --events json: stdout is the programs' (one JSON object per line), the human lines go to stderr
    events = sys.stdout if args.events == "json" else None
    return run_runbook(
        args.runbook,
        args.parameter,
        output=args.output,
        runbooks_dir=args.runbooks_dir,
        open_store=open_store,
        out=sys.stderr if events else None,
        events=events,
    )


def cmd_request(args) -> int:
    from .runbooks.request import RequestHelpError, request_help, request_run

    if args.help or not args.runbook:
        return print_help(args, lambda: request_help(args.runbook, args.commit), RequestHelpError)

    return request_run(args.runbook, args.parameter, commit=args.commit, wait=args.wait)


def cmd_cancel(args) -> int:
    from .runbooks.request import cancel_run

    return cancel_run(args.run_id)


def cmd_publish(args) -> int:
    import json
    from pathlib import Path

    from .runbooks.client import ServiceClient, ServiceError
    from .runbooks.headless import default_runbooks_dir
    from .runbooks.metadata import runbook_metadata

    path = Path(args.notebook).resolve()
    home = Path.home().resolve()
    if not path.is_relative_to(home):
        # what one publishes is one's own work: a notebook in one's home (links followed)
        print(
            f"opshub publish: {args.notebook} is not in your home ({home}): publish your own notebooks", file=sys.stderr
        )
        return 2
    try:
        notebook = json.loads(path.read_text())
        declared = runbook_metadata(notebook, args.notebook)["dashboard"] or {}
    except (OSError, ValueError) as e:  # RunbookMetadataError is a ValueError, and names the key
        print(f"opshub publish: cannot publish {args.notebook}: {e}", file=sys.stderr)
        return 2
    runbooks = default_runbooks_dir().resolve()
    runbook = path.relative_to(runbooks).as_posix() if path.is_relative_to(runbooks) else None
    declared_mode = declared.get("mode")
    # snapshots are the default for runbooks: viewing one never runs anything
    mode = args.mode or declared_mode or ("snapshot" if runbook else "live")
    body = {"name": args.name, "mode": mode, "groups": args.group or None, "runbook": runbook}
    if mode == "live":
        body["notebook"] = notebook  # the copy published: later edits to the file do not change it
    try:
        dashboard = ServiceClient().request("POST", "api/dashboards", body)
    except ServiceError as e:
        print(f"opshub publish: {e}", file=sys.stderr)
        return 3 if e.status == 0 else 1
    from .runbooks.public_links import absolute_url

    groups = ", ".join(dashboard["groups"]) or "every team member"
    print(f"Published {dashboard['name']} ({dashboard['mode']}) for {groups}: {absolute_url(dashboard['url'])}")
    return 0


def cmd_unpublish(args) -> int:
    from .runbooks.client import ServiceClient, ServiceError

    try:
        ServiceClient().request("DELETE", f"api/dashboards/{args.name}")
    except ServiceError as e:
        print(f"opshub unpublish: {e}", file=sys.stderr)
        return 3 if e.status == 0 else 1
    print(f"Unpublished {args.name}")
    return 0


def print_help(args, parameters_help, error) -> int:
    """`opshub run|request [RUNBOOK] --help`: the command's help, then the runbook's parameters."""
    print(args.parser.format_help(), end="")
    if not args.runbook:
        if not args.help:
            print(f"\n{args.parser.prog}: name a runbook", file=sys.stderr)
            return 2
        return 0
    try:
        print("\n" + parameters_help())
    except error as e:
        print(f"\n{args.parser.prog}: {e}", file=sys.stderr)
        return 2 if not getattr(e, "unreachable", False) else 3
    return 0


def add_runbook_arguments(command: argparse.ArgumentParser, runbook_help: str) -> None:
    """The runbook (optional with --help, which then lists its parameters) and its -p options."""
    command.add_argument("runbook", nargs="?", help=runbook_help)
    command.add_argument("-h", "--help", action="store_true", help="show this help, and the runbook's parameters")
    command.set_defaults(parser=command)
    add_parameter_option(command)


def add_parameter_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter (RUNBOOK --help lists them); VALUE as its type reads it: text, 3, 1.5, true/false,"
        ' a list as a,b or JSON (\'["a", "b"]\')',
    )


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
        add_help=False,
    )
    add_runbook_arguments(run, "runbook path inside the runbooks folder, .ipynb optional (net/check)")
    run.add_argument("--output", help="where to save the executed notebook (default ~/.opshub/runs/RUN_ID.ipynb)")
    run.add_argument("--runbooks-dir", help="runbooks folder (default $HOME/$OPSHUB_RUNBOOKS_TARGET, else ~/runbooks)")
    run.add_argument(
        "--events",
        choices=["json"],
        help="for programs: one JSON object per line on stdout, the progress for people on stderr."
        ' {"event": "started", "run_id", "url", "runbook", "runbook_commit", "drift", "parameters"};'
        ' {"event": "cell", "index" (from 0), "status" (succeeded/failed), "seconds"} per code cell;'
        ' {"event": "ended", "run_id", "status", "failed_cell", "error_summary", "url", "exit_code", "notebook"}.'
        " No started event: nothing ran (stderr says why)",
    )
    run.set_defaults(func=cmd_run)

    request = sub.add_parser(
        "request",
        help="ask the runner for an unattended run of a runbook (operators, authors, admins)",
        description="Queue a run of a runbook of the repository on opshub's runner, recorded as requested by you."
        " It runs at the repository's latest commit (or --commit), not in this server, and goes on if this server"
        " stops. Exit codes: 0 requested (with --wait: succeeded), 1 refused (with --wait: did not succeed),"
        " 2 usage error, 3 the service could not be reached.",
        add_help=False,
    )
    add_runbook_arguments(request, "runbook path in the repository, .ipynb optional (net/check)")
    request.add_argument("--commit", help="run the runbook as it is at this commit of the repository")
    request.add_argument("--wait", action="store_true", help="follow the run until it ends")
    request.set_defaults(func=cmd_request)
    cancel = sub.add_parser("cancel", help="cancel a requested run (its requester and admins)")
    cancel.add_argument("run_id")
    cancel.set_defaults(func=cmd_cancel)

    publish = sub.add_parser(
        "publish",
        help="publish a notebook as a dashboard (authors and admins)",
        description="Publish a dashboard at /services/opshub/dashboards/NAME/. live: a copy of the notebook,"
        " rendered on each view (refused for runbooks marked changes_systems). snapshot: the output of the"
        " runbook's latest recorded run (the default for runbooks). Exit codes: 0 published, 1 refused,"
        " 2 usage error, 3 the service could not be reached.",
    )
    publish.add_argument("notebook", help="the notebook (a runbook in ~/runbooks for a snapshot)")
    publish.add_argument("--name", required=True, help="the dashboard's name in its URL: lowercase, digits, dashes")
    publish.add_argument("--mode", choices=["live", "snapshot"], help="default: snapshot for runbooks, else live")
    publish.add_argument("--group", action="append", help="a group that may see it (repeat); default: everyone")
    publish.set_defaults(func=cmd_publish)
    unpublish = sub.add_parser("unpublish", help="remove a published dashboard")
    unpublish.add_argument("name")
    unpublish.set_defaults(func=cmd_unpublish)

    fleet = sub.add_parser("fleet", help="the practice fleet (make fleet): up [--fresh], down, status", add_help=False)
    fleet.add_argument("arguments", nargs=argparse.REMAINDER)
    fleet.set_defaults(func=cmd_fleet)

    from .runbooks import ci as runbooks_ci

    ci = sub.add_parser(
        "ci",
        help="run runbooks live from a file of cases, as a CI job: PASS/FAIL, JUnit XML (not recorded in any hub)",
        description=runbooks_ci.DESCRIPTION,
        epilog=runbooks_ci.EPILOG,
    )
    runbooks_ci.add_arguments(ci)
    ci.set_defaults(func=runbooks_ci.run_command)
    return p


def cmd_fleet(args) -> int:
    from .fleet.__main__ import main as fleet_main  # only here: it needs Docker and cryptography

    return fleet_main(args.arguments)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except SettingsError as e:
        print(f"opshub: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
