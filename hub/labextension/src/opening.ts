// Opening a runbook does not mark it modified: when the kernel starts, JupyterLab writes the kernel's
// language_info into the notebook, which made every opened runbook "modified" (and autosaved). The
// server keeps the committed language_info on save anyway (opshub.lab.save_hook); here the notebook is
// marked unmodified again when that is its only change since it was loaded or saved.
import { NotebookPanel } from '@jupyterlab/notebook';

import { infoWhenOpened } from './api';
import { onlyLanguageInfoChanged } from './cleanState';

export function keepOpenedRunbookUnmodified(panel: NotebookPanel): void {
  const context = panel.context;
  let saved: unknown = null;
  const remember = () => {
    saved = context.model.toJSON();
  };
  void context.ready.then(() => {
    remember();
    context.saveState.connect((_, state) => {
      if (state === 'completed') {
        remember();
      }
    });
    context.model.metadataChanged.connect((model, change) => {
      if (change.key !== 'language_info') {
        return;
      }
      void infoWhenOpened(panel).then(info => {
        // after the change is applied (the model marks itself dirty as it happens)
        setTimeout(() => {
          if (info?.is_runbook && model.dirty && onlyLanguageInfoChanged(saved, model.toJSON())) {
            model.dirty = false;
          }
        }, 0);
      });
    });
  });
}
