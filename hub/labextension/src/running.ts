// "Run as recorded run": the run form from the runbook's typed parameters, a second question before a
// live run of a runbook that changes systems, then the run's progress until it ends.
import { Dialog, showErrorMessage } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { IRunbookInfo, links, post, api, runbookInfo } from './api';
import { element } from './dom';
import { ParameterForm } from './forms';
import { isLiveRun, reviewLines } from './parameters';
import { IRunJob, outcomeText, runPageUrl } from './runProgress';

const TITLE = 'Run as recorded run';
const POLL_MS = 1000;

export async function runRecorded(panel: NotebookPanel): Promise<void> {
  const path = panel.context.path;
  let info: IRunbookInfo;
  try {
    info = await runbookInfo(path);
  } catch (error) {
    return void showErrorMessage(TITLE, (error as Error).message);
  }
  if (!info.is_runbook) {
    const why = `${path} is not in the runbooks folder. Only runbooks run as recorded runs.`;
    return void showErrorMessage(TITLE, why);
  }
  if (panel.context.model.dirty) {
    await panel.context.save();
  }
  const intro =
    info.metadata_problem ||
    info.parameters_problem ||
    (info.parameters.length
      ? 'Parameters of this run (checked by opshub run against what the runbook declares):'
      : 'This runbook declares no parameters.');
  const answer = await new Dialog({
    title: `Run ${info.title} as a recorded run`,
    body: new ParameterForm(info.parameters, intro),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run' })]
  }).launch();
  if (!answer.button.accept || !answer.value) {
    return;
  }
  const parameters = answer.value;
  if (
    info.changes_systems &&
    isLiveRun(info.parameters, parameters) &&
    !(await confirmLive(info, parameters))
  ) {
    return;
  }
  let job: IRunJob;
  try {
    job = await post<IRunJob>('runs', { path, parameters });
  } catch (error) {
    return void showErrorMessage(TITLE, (error as Error).message);
  }
  showProgress(info, job);
}

/** A live run of a runbook that changes systems: say what will apply, and ask again. */
async function confirmLive(
  info: IRunbookInfo,
  parameters: Record<string, string>
): Promise<boolean> {
  const listed = element('ul', { className: 'opshub-review' });
  reviewLines(info.parameters, parameters).forEach(line => {
    listed.append(element('li', {}, element('code', {}, line.text), line.set ? ' (set here)' : ''));
  });
  const intro =
    'This runbook changes systems and dry_run is off: it will change them, with these values.';
  const review = new Widget({ node: element('div', {}, element('p', {}, intro), listed) });
  const confirmed = await new Dialog({
    title: `Start a live run of ${info.title}?`,
    body: review,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Start live run' })]
  }).launch();
  return confirmed.button.accept;
}

/** The run's progress lines as `opshub run` prints them, polled until it ends, then a link to its page. */
function showProgress(info: IRunbookInfo, started: IRunJob): void {
  const body = new Widget({ node: element('div', { className: 'opshub-progress' }) });
  const state = element('p', { className: 'opshub-progress-state' }, 'Starting…');
  const output = element('pre', { className: 'opshub-progress-lines' });
  const link = element('p', { className: 'opshub-progress-link' });
  body.node.append(state, output, link);
  const dialog = new Dialog({
    title: `Recorded run of ${info.title}`,
    body,
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
  void dialog.launch();
  let runsPrefix: string | null = null;
  const poll = async () => {
    let job: IRunJob;
    try {
      job = await api<IRunJob>(`runs/${started.id}`);
      runsPrefix = runsPrefix || (await links()).runs;
    } catch (error) {
      state.textContent = `Cannot follow the run: ${(error as Error).message}`;
      return;
    }
    output.textContent = job.lines.join('\n');
    output.scrollTop = output.scrollHeight;
    if (job.run_id && !link.firstChild) {
      const href = runPageUrl(runsPrefix, job.run_id);
      link.append(
        element('a', { href, target: '_blank', className: 'opshub-run-link' }, 'Open the run page')
      );
    }
    if (job.state === 'running') {
      state.textContent = 'Running…';
      setTimeout(poll, POLL_MS);
    } else {
      state.textContent = outcomeText(job.exit_code);
      state.dataset.exitCode = String(job.exit_code);
    }
  };
  void poll();
}
