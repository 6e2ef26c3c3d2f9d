// "Publish as dashboard": name, mode and groups in a dialog, sent through opshub.lab to the service.
import { Dialog, Notification, showErrorMessage } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';

import { IRunbookInfo, post, runbookInfo } from './api';
import { FormWidget } from './forms';
import { dashboardName, parseGroups } from './publishRequest';

const TITLE = 'Publish as dashboard';

interface IPublished {
  name?: string;
  url: string;
}

export async function publish(panel: NotebookPanel): Promise<void> {
  const path = panel.context.path;
  let info: IRunbookInfo;
  try {
    info = await runbookInfo(path);
  } catch (error) {
    return void showErrorMessage(TITLE, (error as Error).message);
  }
  if (panel.context.model.dirty) {
    await panel.context.save();
  }
  const form = new FormWidget(
    [
      {
        name: 'name',
        value: dashboardName(path),
        help: "lower-case letters, digits and dashes: the dashboard's URL"
      },
      {
        name: 'mode',
        value: 'snapshot',
        choices: ['snapshot', 'live'],
        help: 'snapshot shows the latest recorded run and executes nothing; live runs the notebook in Voila for each viewer'
      },
      {
        name: 'groups',
        value: '',
        help: 'comma-separated groups that may see it; empty: everyone on the team'
      }
    ],
    info.changes_systems
      ? 'This runbook changes systems: it can only be published as a snapshot.'
      : ''
  );
  const answer = await new Dialog({
    title: TITLE,
    body: form,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Publish' })]
  }).launch();
  if (!answer.button.accept || !answer.value) {
    return;
  }
  const { name, mode, groups } = answer.value;
  try {
    const dashboard = await post<IPublished>('publish', {
      path,
      name,
      mode,
      groups: parseGroups(groups)
    });
    Notification.success(`Published ${dashboard.name || name}`, {
      autoClose: false,
      actions: [
        { label: 'Open the dashboard', callback: () => window.open(dashboard.url, '_blank') }
      ]
    });
  } catch (error) {
    void showErrorMessage(TITLE, (error as Error).message);
  }
}
