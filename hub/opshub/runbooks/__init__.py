"""The execution side of runbooks, run in people's servers and system accounts (never imports the service).

The git side: `mirror` (the hub's copy of the team's repository), `pull` (into homes), `catalog` (which
runbooks the repository has).
`opshub run`: `headless` (the command), `params`, `gitstate`, `execute`, `results` (the one failure rule,
shared with the lab's interactive-run recorder), `terminal`. Shared by all: `masking`, `metadata`, and
`client` (HTTP to the opshub service).
"""
