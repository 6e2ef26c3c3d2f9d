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

// The text of a typed value as `opshub run -p NAME VALUE` takes it: lists as JSON lists.
function asText(field, value) {
  if (field.multiple) {
    return JSON.stringify((value || []).map(String));
  }
  if (field.type === 'boolean') {
    return value ? 'true' : 'false';
  }
  if (value === null || value === undefined) {
    return '';
  }
  return String(value);
}

// The run form of a runbook, one widget per typed parameter (opshub.lab's `runbook` answer, as
// typed_parameters.form_fields describes them): dropdowns for choices, lists whose choices follow another
// parameter (choices_by), checkboxes, number fields with their bounds, multi-selects, the fixed ones
// read-only. getValue() gives the values that differ from their defaults, as text.
class ParameterForm extends Widget {
  constructor(fields, intro) {
    super({ node: element('form', { className: 'opshub-form opshub-parameters' }) });
    if (intro) {
      this.node.append(element('p', { className: 'opshub-form-intro' }, intro));
    }
    this.fields = fields;
    this.read = {};
    this.initial = {};
    const followers = [];
    fields.forEach(field => {
      const id = `opshub-p-${field.name}`;
      let input;
      const choices = field.choices || null;
      if (!field.settable) {
        input = element('input', { name: field.name, type: 'text', id, readonly: 'readonly', disabled: 'disabled' });
        input.value = field.default_text || '';
      } else if (field.type === 'boolean' && !field.multiple) {
        input = element('input', { name: field.name, type: 'checkbox', id });
        input.checked = field.default === true;
        this.read[field.name] = () => asText(field, input.checked);
      } else if (choices || field.choices_by) {
        input = element('select', { name: field.name, id });
        input.multiple = Boolean(field.multiple);
        const picked = new Set(field.multiple ? (field.default || []).map(String) : [asText(field, field.default)]);
        const fill = list => {
          const keep = new Set(Array.from(input.selectedOptions).map(o => o.value));
          input.textContent = '';
          if (!field.multiple && !list.map(String).includes(asText(field, field.default))) {
            input.append(element('option', { value: '' }, ''));
          }
          list.forEach(choice => {
            const option = element('option', { value: String(choice) }, String(choice));
            option.selected = keep.size ? keep.has(String(choice)) : picked.has(String(choice));
            input.append(option);
          });
          if (field.multiple) {
            input.size = Math.max(2, Math.min(list.length, 6));
          }
        };
        if (field.choices_by) {
          followers.push({ field, fill });
        } else {
          fill(choices);
        }
        this.read[field.name] = () => {
          const values = Array.from(input.selectedOptions).map(o => o.value);
          return field.multiple ? JSON.stringify(values) : values[0] || '';
        };
      } else if (field.multiple) {
        input = element('input', { name: field.name, type: 'text', id, placeholder: 'items separated by commas' });
        input.value = (field.default || []).join(', ');
        this.read[field.name] = () => JSON.stringify(input.value.split(',').map(v => v.trim()).filter(v => v));
      } else if (field.type === 'integer' || field.type === 'number') {
        input = element('input', { name: field.name, type: 'number', id, step: field.type === 'integer' ? '1' : 'any' });
        ['min', 'max'].forEach(key => {
          if (field[key] !== undefined && field[key] !== null) {
            input.setAttribute(key, String(field[key]));
          }
        });
        input.value = asText(field, field.default);
        this.read[field.name] = () => input.value.trim();
      } else {
        input = element('input', { name: field.name, type: 'text', id });
        input.value = field.type === 'any' ? field.default_text || '' : asText(field, field.default);
        this.read[field.name] = () => input.value;
      }
      const label = element('label', { className: 'opshub-field', for: id }, element('span', {}, field.name));
      const row = element('div', { className: `opshub-param opshub-param-${field.type}`, 'data-name': field.name }, label, input);
      if (!field.settable) {
        row.append(element('small', { className: 'opshub-fixed' }, 'fixed: the runbook\'s default, it cannot be set'));
      }
      const kind = (field.multiple ? 'list of ' : '') + field.type +
        (field.min !== undefined ? `, min ${field.min}` : '') + (field.max !== undefined ? `, max ${field.max}` : '');
      row.append(element('small', {}, [field.description || field.help || '', kind].filter(t => t).join(' · ')));
      if (field.problem) {
        row.append(element('small', { className: 'opshub-field-problem' }, field.problem));
      }
      this.node.append(row);
      field.input = input;
    });
    followers.forEach(({ field, fill }) => {
      const parentName = (field.depends_on || [])[0];
      const parent = fields.find(f => f.name === parentName);
      const current = () => (parent && parent.input ? parent.input.value : '');
      const show = () => fill(field.choices_by[current()] || []);
      if (parent && parent.input) {
        parent.input.addEventListener('change', show);
      }
      show();
    });
    Object.entries(this.read).forEach(([name, read]) => {
      this.initial[name] = read();
    });
    this.node.addEventListener('submit', event => event.preventDefault());
  }

  getValue() {
    const values = {};
    Object.entries(this.read).forEach(([name, read]) => {
      const value = read();
      if (value !== this.initial[name]) {
        values[name] = value;
      }
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
  const intro = info.metadata_problem || info.parameters_problem || (info.parameters.length
    ? 'Parameters of this run (checked by opshub run against what the runbook declares):'
    : 'This runbook declares no parameters.');
  const form = new ParameterForm(info.parameters, intro);
  const answer = await new Dialog({
    title: `Run ${info.title} as a recorded run`,
    body: form,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run' })]
  }).launch();
  if (!answer.button.accept) {
    return;
  }
  const parameters = answer.value;
  const dryRun = info.parameters.find(p => p.name === 'dry_run' && p.type === 'boolean');
  const live = dryRun && (parameters.dry_run !== undefined ? parameters.dry_run === 'false' : dryRun.default === false);
  if (info.changes_systems && live) {
    // a live run of a runbook that changes systems: say what will apply, and ask again
    const listed = element('ul', { className: 'opshub-review' });
    info.parameters.forEach(p => {
      const value = parameters[p.name] !== undefined ? parameters[p.name] : p.default_text || asText(p, p.default);
      listed.append(element('li', {}, element('code', {}, `${p.name} = ${value}`), parameters[p.name] !== undefined ? ' (set here)' : ''));
    });
    const review = new Widget({ node: element('div', {}, element('p', {}, 'This runbook changes systems and dry_run is off: it will change them, with these values.'), listed) });
    const confirmed = await new Dialog({
      title: `Start a live run of ${info.title}?`,
      body: review,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Start live run' })]
    }).launch();
    if (!confirmed.button.accept) {
      return;
    }
  }
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
