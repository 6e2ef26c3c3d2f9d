"""The runner of unattended runs: one server of the `opshub-runner` system account per run.

The opshub service records a run (`queued`), claims it when `runner.max_concurrent` and the run's
locks allow, and asks the hub for a named server of `opshub-runner` named after the run. The
deployment's spawner starts it like anyone's server: the `opshub-runner` OS account when the embedded
default runs as root, a container of the ops image in Docker, a pod in Kubernetes. So the runbook's
code runs in the execution plane, never in the hub's trust domain, and no person's server is needed:
idle culling or a person's logout cannot kill the run.

The server (`python -m opshub.runner`) knows nothing until the service hands it the job:

- `POST opshub-runner/job` under the server's prefix, with the service's hub token (checked with the
  hub: it must be the opshub service's): the run's id, runbook, commit and parameters, the runbooks
  repository's files at that commit (a tar, base64) and the run's own token. One job per server.
- It runs the runbook with `opshub run`'s machinery (opshub.runner.job, a child process that gets the
  run token on its stdin, never in an environment), which reports the run's start, heartbeats and end
  to the service with that token (`api/runner/runs/<id>/...`): the token writes only that run.
- It tells the hub it is active while the run goes on (so no idle culler stops it), and exits when the
  run has ended; the service removes the named server.

Credentials (ssh keys, cloud tokens) reach the run from files named in `runner.credentials`, read by
the runner itself when the job starts (the hub never reads them), as environment variables of the
kernel, masked in the recorded notebook like any secret.
"""

JOB_PATH = "opshub-runner/job"  # under the server's prefix
# What the hub's spawner hands the runner's server (configure/spawner.py SystemServers).
CREDENTIALS_ENV = "OPSHUB_RUNNER_CREDENTIALS"  # runner.credentials as JSON: {NAME: {file, runbooks}}
RUN_TOKEN_SCHEME = "Bearer"  # Authorization: Bearer <run token>, on the service's runner API
