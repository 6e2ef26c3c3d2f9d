// The warning shown when an opened runbook is not as the team's repository has it.
import { Notification } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';

import { infoWhenOpened, links } from './api';
import { driftMessage } from './driftReasons';

export async function warnAboutDrift(panel: NotebookPanel): Promise<void> {
  const info = await infoWhenOpened(panel);
  const message = info && driftMessage(info);
  if (!message) {
    return; // as the repository has it, not a runbook, or not ours to report: the notebook opened fine
  }
  panel.node.dataset.opshubDrift = 'true';
  const { pull } = await links();
  Notification.warning(message, {
    autoClose: false,
    actions: [{ label: 'Pull the latest runbooks', callback: () => window.open(pull, '_blank') }]
  });
}
