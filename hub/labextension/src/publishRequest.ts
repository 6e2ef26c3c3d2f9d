// What "Publish as dashboard" sends: pure, tested by jest.

/** The dashboard name offered for a notebook: its file name, lower-case letters, digits and dashes. */
export function dashboardName(path: string): string {
  return (path.split('/').pop() || '')
    .replace(/\.ipynb$/, '')
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

/** The groups typed as "ops, dba,": ["ops", "dba"]; empty means everyone on the team. */
export function parseGroups(text: string): string[] {
  return text
    .split(',')
    .map(g => g.trim())
    .filter(g => g);
}
