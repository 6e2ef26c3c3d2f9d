// opshub's icons, drawn in JupyterLab's icon colour (jp-icon3) so they follow the theme.
import { LabIcon } from '@jupyterlab/ui-components';

function svg(body: string): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">${body}</g></svg>`;
}

/** A play sign inside a record ring: run, recorded. */
export const runRecordedIcon = new LabIcon({
  name: 'opshub:run-recorded',
  svgstr: svg(
    '<path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 2a8 8 0 1 1 0 16 8 8 0 0 1 0-16z"/><path d="M10 8v8l6-4z"/>'
  )
});

/** A dashboard with an arrow going up: publish. */
export const publishIcon = new LabIcon({
  name: 'opshub:publish',
  svgstr: svg(
    '<path d="M3 4h18v11h-2V6H5v9H3z"/><path d="M6 13h2v2H6zm3-3h2v5H9z"/><path d="M16 21v-5h-3l4-4 4 4h-3v5z"/>'
  )
});

/** A clock: the run history. */
export const historyIcon = new LabIcon({
  name: 'opshub:history',
  svgstr: svg(
    '<path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 2a8 8 0 1 1 0 16 8 8 0 0 1 0-16z"/><path d="M11 7h2v5.4l3.5 2.1-1 1.7L11 13.6z"/>'
  )
});

/** Four panels: the dashboards. */
export const dashboardsIcon = new LabIcon({
  name: 'opshub:dashboards',
  svgstr: svg('<path d="M3 3h8v10H3zm10 0h8v6h-8zM3 15h8v6H3zm10-4h8v10h-8z"/>')
});
