// The service's pages (run history, dashboards), opened in a new browser tab.
import { ILinks, links } from './api';

export function openLink(key: keyof ILinks): () => Promise<void> {
  return async () => {
    const found = await links();
    window.open(found[key], '_blank');
  };
}
