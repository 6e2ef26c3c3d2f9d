// opshub in JupyterLab: run a runbook as a recorded run, publish it as a dashboard, warn about drift,
// and reach the run history. The server side is opshub.lab (the user's server, /opshub/api/...).
import { ICommandPalette, Dialog, Notification, ToolbarButton, showErrorMessage } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

const CATEGORY = 'opshub';
const POLL_MS = 1000;

async function api(path, init) {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(URLExt.join(settings.baseUrl, 'opshub/api', path), init || {}, settings);
  let data = {};
  try {
    data = await response.json();
  } catch (e) {
    // an answer without a JSON body: the status says enough
  }
  if (!response.ok) {
    throw new Error(data.message || `${response.status} ${response.statusText}`);
  }
  return data;
}

function post(path, body) {
  return api(path, { method: 'POST', body: JSON.stringify(body) });
}

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  Object.entries(attributes || {}).forEach(([key, value]) => {
    if (key === 'className') {
      node.className = value;
    } else {
      node.setAttribute(key, value);
    }
  });
  children.forEach(child => node.append(child));
  return node;
}

// A form whose values a Dialog returns (Dialog calls getValue on its body).
class FormWidget extends Widget {
  constructor(fields, intro) {
    super({ node: element('form', { className: 'opshub-form' }) });
    if (intro) {
      this.node.append(element('p', { className: 'opshub-form-intro' }, intro));
    }
    this.inputs = {};
    fields.forEach(field => {
      let input;
      if (field.choices) {
        input = element('select', { name: field.name });
        field.choices.forEach(choice => {
          const option = element('option', { value: choice }, choice);
          if (choice === field.value) {
            option.selected = true;
          }
          input.append(option);
        });
      } else {
        input = element('input', { name: field.name, type: 'text' });
        input.value = field.value || '';
      }
      const label = element('label', { className: 'opshub-field' }, element('span', {}, field.label || field.name), input);
      if (field.help) {
        label.append(element('small', {}, field.help));
      }
      this.node.append(label);
      this.inputs[field.name] = input;
    });
    this.node.addEventListener('submit', event => event.preventDefault());
  }

  getValue() {
    const values = {};
    Object.entries(this.inputs).forEach(([name, input]) => {
      values[name] = input.value;
    });
    return values;
  }
}

async function links() {
  return api('links');
}

async function runRecorded(panel) {
  const path = panel.context.path;
  let info;
  try {
    info = await api(`runbook?path=${encodeURIComponent(path)}`);
  } catch (error) {
    return showErrorMessage('Run as recorded run', error.message);
  }
  if (!info.is_runbook) {
    return showErrorMessage('Run as recorded run', `${path} is not in the runbooks folder. Only runbooks run as recorded runs.`);
  }
  if (panel.context.model.dirty) {
    await panel.context.save();
  }
  const fields = info.parameters.map(p => ({ name: p.name, value: p.default, help: p.help }));
  const intro = info.parameters_problem || (fields.length
    ? 'Parameters of this run (Python values, as in the parameters cell):'
    : 'This runbook declares no parameters.');
  const form = new FormWidget(fields, intro);
  const answer = await new Dialog({
    title: `Run ${info.title} as a recorded run`,
    body: form,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run' })]
  }).launch();
  if (!answer.button.accept) {
    return;
  }
  const parameters = {};
  info.parameters.forEach(p => {
    if (answer.value[p.name] !== p.default) {
      parameters[p.name] = answer.value[p.name];
    }
  });
  let job;
  try {
    job = await post('runs', { path, parameters });
  } catch (error) {
    return showErrorMessage('Run as recorded run', error.message);
  }
  showProgress(info, job);
}

function showProgress(info, job) {
  const body = new Widget({ node: element('div', { className: 'opshub-progress' }) });
  const state = element('p', { className: 'opshub-progress-state' }, 'Starting…');
  const output = element('pre', { className: 'opshub-progress-lines' });
  const link = element('p', { className: 'opshub-progress-link' });
  body.node.append(state, output, link);
  const dialog = new Dialog({ title: `Recorded run of ${info.title}`, body, buttons: [Dialog.okButton({ label: 'Close' })] });
  dialog.launch();
  let historyLinks = null;
  const poll = async () => {
    try {
      job = await api(`runs/${job.id}`);
      historyLinks = historyLinks || (await links());
    } catch (error) {
      state.textContent = `Cannot follow the run: ${error.message}`;
      return;
    }
    output.textContent = job.lines.join('\n');
    output.scrollTop = output.scrollHeight;
    if (job.run_id && !link.firstChild) {
      link.append(element('a', { href: historyLinks.runs + job.run_id, target: '_blank', className: 'opshub-run-link' }, 'Open the run page'));
    }
    if (job.state === 'running') {
      state.textContent = 'Running…';
      setTimeout(poll, POLL_MS);
    } else {
      const outcome = { 0: 'succeeded', 1: 'failed' }[job.exit_code] || `stopped (exit code ${job.exit_code})`;
      state.textContent = `The run ${outcome}.`;
      state.dataset.exitCode = String(job.exit_code);
    }
  };
  poll();
}

async function publish(panel) {
  const path = panel.context.path;
  let info;
  try {
    info = await api(`runbook?path=${encodeURIComponent(path)}`);
  } catch (error) {
    return showErrorMessage('Publish as dashboard', error.message);
  }
  if (panel.context.model.dirty) {
    await panel.context.save();
  }
  const slug = path.split('/').pop().replace(/\.ipynb$/, '').toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '');
  const form = new FormWidget([
    { name: 'name', value: slug, help: 'lower-case letters, digits and dashes: the dashboard\'s URL' },
    { name: 'mode', value: 'snapshot', choices: ['snapshot', 'live'], help: 'snapshot shows the latest recorded run and executes nothing; live runs the notebook in Voila for each viewer' },
    { name: 'groups', value: '', help: 'comma-separated groups that may see it; empty: everyone on the team' }
  ], info.changes_systems ? 'This runbook changes systems: it can only be published as a snapshot.' : '');
  const answer = await new Dialog({
    title: 'Publish as dashboard',
    body: form,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Publish' })]
  }).launch();
  if (!answer.button.accept) {
    return;
  }
  const groups = answer.value.groups.split(',').map(g => g.trim()).filter(g => g);
  try {
    const dashboard = await post('publish', { path, name: answer.value.name, mode: answer.value.mode, groups });
    Notification.success(`Published ${dashboard.name || answer.value.name}`, {
      autoClose: false,
      actions: [{ label: 'Open the dashboard', callback: () => window.open(dashboard.url, '_blank') }]
    });
  } catch (error) {
    showErrorMessage('Publish as dashboard', error.message);
  }
}

async function warnAboutDrift(panel) {
  await panel.context.ready;
  let info;
  try {
    info = await api(`runbook?path=${encodeURIComponent(panel.context.path)}`);
  } catch (error) {
    return; // not ours to report: the notebook opened fine
  }
  if (!info.is_runbook || !(info.drift || info.upstream_moved)) {
    return;
  }
  const reasons = [];
  if (info.drift) {
    reasons.push('your copy differs from the repository (local edits)');
  }
  if (info.upstream_moved) {
    reasons.push('the team\'s repository has a newer version');
  }
  panel.node.dataset.opshubDrift = 'true';
  const { pull } = await links();
  Notification.warning(`${info.title}: ${reasons.join(' and ')}. Runs of it are recorded with drift.`, {
    autoClose: false,
    actions: [{ label: 'Pull the latest runbooks', callback: () => window.open(pull, '_blank') }]
  });
}

function openLink(key) {
  return async () => {
    const found = await links();
    window.open(found[key], '_blank');
  };
}

const plugin = {
  id: 'opshub-lab:plugin',
  description: 'opshub: recorded runs, dashboards, drift and the run history in JupyterLab',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILauncher],
  activate: (app, tracker, palette, launcher) => {
    const current = () => tracker.currentWidget;
    app.commands.addCommand('opshub:run-recorded', {
      label: 'Run as recorded run',
      caption: 'Run this runbook headless with its parameters, recorded in the run history',
      isEnabled: () => current() !== null,
      execute: () => runRecorded(current())
    });
    app.commands.addCommand('opshub:publish', {
      label: 'Publish as dashboard',
      caption: 'Publish this notebook as a read-only dashboard',
      isEnabled: () => current() !== null,
      execute: () => publish(current())
    });
    app.commands.addCommand('opshub:open-history', { label: 'Run history', caption: 'Every runbook run, in the opshub service', execute: openLink('history') });
    app.commands.addCommand('opshub:open-dashboards', { label: 'Dashboards', caption: 'Published dashboards', execute: openLink('dashboards') });

    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: panel => {
        const run = new ToolbarButton({
          className: 'opshub-run-recorded',
          label: 'Run as recorded run',
          tooltip: 'Run this runbook headless with its parameters, recorded in the run history',
          onClick: () => runRecorded(panel)
        });
        panel.toolbar.insertItem(10, 'opshubRunRecorded', run);
        return run;
      }
    });
    tracker.widgetAdded.connect((_, panel) => {
      warnAboutDrift(panel);
    });

    ['opshub:run-recorded', 'opshub:publish', 'opshub:open-history', 'opshub:open-dashboards'].forEach(command => {
      if (palette) {
        palette.addItem({ command, category: CATEGORY });
      }
    });
    if (launcher) {
      launcher.add({ command: 'opshub:open-history', category: CATEGORY, rank: 0 });
      launcher.add({ command: 'opshub:open-dashboards', category: CATEGORY, rank: 1 });
    }
  }
};

export default plugin;
