// The values of a runbook's typed parameters as `opshub run -p NAME VALUE` takes them: pure functions,
// no JupyterLab, so jest tests them as they are.

/** One parameter as opshub.lab's `runbook` answer describes it (typed_parameters.form_fields). */
export interface IParameterField {
  name: string;
  type: string; // string, integer, number, boolean, any...
  default?: unknown;
  default_text?: string;
  description?: string;
  help?: string;
  choices?: unknown[] | null;
  choices_by?: Record<string, unknown[]> | null;
  depends_on?: string[];
  multiple?: boolean;
  settable?: boolean;
  min?: number | null;
  max?: number | null;
  problem?: string | null;
}

/** The text of a typed value: lists as JSON lists of strings, booleans as true/false. */
export function asText(field: IParameterField, value: unknown): string {
  if (field.multiple) {
    return JSON.stringify(((value as unknown[]) || []).map(String));
  }
  if (field.type === 'boolean') {
    return value ? 'true' : 'false';
  }
  if (value === null || value === undefined) {
    return '';
  }
  return String(value);
}

/** A list typed as text, items separated by commas, as JSON: "a, b," gives ["a","b"]. */
export function commaList(text: string): string {
  return JSON.stringify(
    text
      .split(',')
      .map(v => v.trim())
      .filter(v => v)
  );
}

/** What the form says under a field: its description, then its type and bounds. */
export function fieldHint(field: IParameterField): string {
  const bounds =
    (field.min !== undefined && field.min !== null ? `, min ${field.min}` : '') +
    (field.max !== undefined && field.max !== null ? `, max ${field.max}` : '');
  const kind = (field.multiple ? 'list of ' : '') + field.type + bounds;
  return [field.description || field.help || '', kind].filter(t => t).join(' · ');
}

/** The values that differ from what the form showed first: only those are sent. */
export function changedValues(
  initial: Record<string, string>,
  current: Record<string, string>
): Record<string, string> {
  const changed: Record<string, string> = {};
  Object.entries(current).forEach(([name, value]) => {
    if (value !== initial[name]) {
      changed[name] = value;
    }
  });
  return changed;
}

/** Whether these values make a live run: the runbook has a boolean dry_run, and it ends up false. */
export function isLiveRun(fields: IParameterField[], values: Record<string, string>): boolean {
  const dryRun = fields.find(p => p.name === 'dry_run' && p.type === 'boolean');
  if (!dryRun) {
    return false;
  }
  return values.dry_run !== undefined ? values.dry_run === 'false' : dryRun.default === false;
}

/** Every parameter with the value the run will have, and whether it was set in the form. */
export function reviewLines(
  fields: IParameterField[],
  values: Record<string, string>
): { text: string; set: boolean }[] {
  return fields.map(p => {
    const set = values[p.name] !== undefined;
    const value = set ? values[p.name] : p.default_text || asText(p, p.default);
    return { text: `${p.name} = ${value}`, set };
  });
}

/** The choices of a list that follows its parent parameter (choices_by), for the parent's value. */
export function followerChoices(field: IParameterField, parentValue: string): unknown[] {
  return (field.choices_by || {})[parentValue] || [];
}
