// opshub.lab's API in the person's server (/user/<name>/opshub/api/...), and what it answers.
import { URLExt } from '@jupyterlab/coreutils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';

import { IParameterField } from './parameters';

/** The `runbook?path=` answer: is the notebook a runbook, its parameters, its commit and drift. */
export interface IRunbookInfo {
  path: string;
  runbook: string | null;
  is_runbook: boolean;
  commit?: string | null;
  drift?: boolean;
  upstream_moved?: boolean;
  parameters: IParameterField[];
  parameters_problem?: string | null;
  title: string;
  changes_systems?: boolean;
  metadata_problem?: string | null;
}

/** The `links` answer: where the service's pages are, as the browser reaches them. */
export interface ILinks {
  history: string;
  dashboards: string;
  runs: string;
  pull: string;
}

export async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'opshub/api', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  let data: any = {};
  try {
    data = await response.json();
  } catch {
    // an answer without a JSON body: the status says enough
  }
  if (!response.ok) {
    throw new Error(data.message || `${response.status} ${response.statusText}`);
  }
  return data as T;
}

export function post<T>(path: string, body: unknown): Promise<T> {
  return api<T>(path, { method: 'POST', body: JSON.stringify(body) });
}

export function runbookInfo(path: string): Promise<IRunbookInfo> {
  return api<IRunbookInfo>(`runbook?path=${encodeURIComponent(path)}`);
}

export function links(): Promise<ILinks> {
  return api<ILinks>('links');
}

const opened = new WeakMap<NotebookPanel, Promise<IRunbookInfo | null>>();

/** What opshub knows of a notebook as it opened, asked once per panel (the drift warning and the
 * runbook-only toolbar button share it); null when the server cannot say. */
export function infoWhenOpened(panel: NotebookPanel): Promise<IRunbookInfo | null> {
  let info = opened.get(panel);
  if (!info) {
    info = panel.context.ready.then(() => runbookInfo(panel.context.path)).catch(() => null);
    opened.set(panel, info);
  }
  return info;
}
