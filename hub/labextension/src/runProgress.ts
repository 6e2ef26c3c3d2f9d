// How a recorded run's job reads in the progress dialog: pure, tested by jest.

/** A job of opshub.lab's `runs` API: `opshub run --events json` started from JupyterLab. */
export interface IRunJob {
  id: string;
  runbook: string;
  state: 'running' | 'done';
  exit_code: number | null;
  run_id: string | null;
  status: string | null;
  lines: string[];
}

/** The sentence the dialog ends on, from `opshub run`'s exit code. */
export function outcomeText(exitCode: number | null): string {
  const outcome =
    ({ 0: 'succeeded', 1: 'failed' } as Record<number, string>)[exitCode as number] ||
    `stopped (exit code ${exitCode})`;
  return `The run ${outcome}.`;
}

/** The run page of a run, under the service's `runs/` prefix. */
export function runPageUrl(runsPrefix: string, runId: string): string {
  return runsPrefix + runId;
}
