// opshub in JupyterLab: run a runbook as a recorded run, publish it as a dashboard, warn about drift,
// and reach the run history. The server side is opshub.lab (the person's server, /opshub/api/...).
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';

import { infoWhenOpened } from './api';
import { warnAboutDrift } from './drift';
import { dashboardsIcon, historyIcon, publishIcon, runRecordedIcon } from './icons';
import { openLink } from './links';
import { keepOpenedRunbookUnmodified } from './opening';
import { publish } from './publishing';
import { runRecorded } from './running';

const CATEGORY = 'opshub';

export const CommandIDs = {
  runRecorded: 'opshub:run-recorded',
  publish: 'opshub:publish',
  openHistory: 'opshub:open-history',
  openDashboards: 'opshub:open-dashboards'
};

const RUN_CAPTION = 'Run this runbook headless with its parameters, recorded in the run history';
const PUBLISH_CAPTION = 'Publish this runbook as a read-only dashboard';

/** The notebook toolbar's buttons: "Run as recorded run" on every notebook (it says why a notebook
 * outside the runbooks folder cannot), "Publish" only once opshub says the notebook is a runbook. */
function addToolbarButtons(panel: NotebookPanel): void {
  const run = new ToolbarButton({
    className: 'opshub-run-recorded',
    icon: runRecordedIcon,
    label: 'Run as recorded run',
    tooltip: RUN_CAPTION,
    onClick: () => void runRecorded(panel)
  });
  panel.toolbar.insertItem(10, 'opshubRunRecorded', run);
  const publishButton = new ToolbarButton({
    className: 'opshub-publish',
    icon: publishIcon,
    label: 'Publish',
    tooltip: PUBLISH_CAPTION,
    onClick: () => void publish(panel)
  });
  publishButton.hide();
  panel.toolbar.insertItem(11, 'opshubPublish', publishButton);
  void infoWhenOpened(panel).then(info => {
    if (info && info.is_runbook && !publishButton.isDisposed) {
      publishButton.show();
    }
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'opshub-lab:plugin',
  description: 'opshub: recorded runs, dashboards, drift and the run history in JupyterLab',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILauncher, IMainMenu],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    mainMenu: IMainMenu | null
  ) => {
    const current = () => tracker.currentWidget;
    app.commands.addCommand(CommandIDs.runRecorded, {
      label: 'Run as recorded run',
      caption: RUN_CAPTION,
      icon: runRecordedIcon,
      isEnabled: () => current() !== null,
      execute: () => {
        const panel = current();
        return panel ? runRecorded(panel) : undefined;
      }
    });
    app.commands.addCommand(CommandIDs.publish, {
      label: 'Publish as dashboard',
      caption: PUBLISH_CAPTION,
      icon: publishIcon,
      isEnabled: () => current() !== null,
      execute: () => {
        const panel = current();
        return panel ? publish(panel) : undefined;
      }
    });
    app.commands.addCommand(CommandIDs.openHistory, {
      label: 'Run history',
      caption: 'Every runbook run, in the opshub service',
      icon: historyIcon,
      execute: openLink('history')
    });
    app.commands.addCommand(CommandIDs.openDashboards, {
      label: 'Dashboards',
      caption: 'Published dashboards',
      icon: dashboardsIcon,
      execute: openLink('dashboards')
    });

    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (panel: NotebookPanel) => addToolbarButtons(panel)
    });
    tracker.widgetAdded.connect((_, panel) => {
      void warnAboutDrift(panel);
      keepOpenedRunbookUnmodified(panel);
    });

    if (palette) {
      Object.values(CommandIDs).forEach(command =>
        palette.addItem({ command, category: CATEGORY })
      );
    }
    if (mainMenu) {
      // beside Save and Export: where authors look for what to do with the file
      mainMenu.fileMenu.addGroup([{ command: CommandIDs.publish }], 40);
      mainMenu.runMenu.addGroup([{ command: CommandIDs.runRecorded }], 40);
    }
    if (launcher) {
      launcher.add({ command: CommandIDs.openHistory, category: CATEGORY, rank: 0 });
      launcher.add({ command: CommandIDs.openDashboards, category: CATEGORY, rank: 1 });
    }
  }
};

export default plugin;
