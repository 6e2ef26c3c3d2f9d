// What the drift warning says about an opened runbook: pure, tested by jest.

/** The part of opshub.lab's `runbook` answer the warning reads. */
export interface IDriftInfo {
  is_runbook: boolean;
  drift?: boolean;
  upstream_moved?: boolean;
  title?: string;
}

/** Why the runbook is not as the team's repository has it; empty when it is. */
export function driftReasons(info: IDriftInfo): string[] {
  if (!info.is_runbook) {
    return [];
  }
  const reasons: string[] = [];
  if (info.drift) {
    reasons.push('your copy differs from the repository (local edits)');
  }
  if (info.upstream_moved) {
    reasons.push("the team's repository has a newer version");
  }
  return reasons;
}

/** The warning's text, or null when there is nothing to warn about. */
export function driftMessage(info: IDriftInfo): string | null {
  const reasons = driftReasons(info);
  if (!reasons.length) {
    return null;
  }
  return `${info.title}: ${reasons.join(' and ')}. Runs of it are recorded with drift.`;
}
