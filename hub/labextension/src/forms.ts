// Dialog bodies whose values a Dialog returns (Dialog calls getValue on its body).
import { Widget } from '@lumino/widgets';

import { element } from './dom';
import {
  IParameterField,
  asText,
  changedValues,
  commaList,
  fieldHint,
  followerChoices
} from './parameters';

/** A plain field of FormWidget: a text input, or a select when it has choices. */
export interface IFormField {
  name: string;
  label?: string;
  value?: string;
  choices?: string[];
  help?: string;
}

export class FormWidget extends Widget {
  private inputs: Record<string, HTMLInputElement | HTMLSelectElement> = {};

  constructor(fields: IFormField[], intro?: string) {
    super({ node: element('form', { className: 'opshub-form' }) });
    if (intro) {
      this.node.append(element('p', { className: 'opshub-form-intro' }, intro));
    }
    fields.forEach(field => {
      let input: HTMLInputElement | HTMLSelectElement;
      if (field.choices) {
        const select = element('select', { name: field.name });
        field.choices.forEach(choice => {
          const option = element('option', { value: choice }, choice);
          option.selected = choice === field.value;
          select.append(option);
        });
        input = select;
      } else {
        input = element('input', { name: field.name, type: 'text' });
        input.value = field.value || '';
      }
      const label = element(
        'label',
        { className: 'opshub-field' },
        element('span', {}, field.label || field.name),
        input
      );
      if (field.help) {
        label.append(element('small', {}, field.help));
      }
      this.node.append(label);
      this.inputs[field.name] = input;
    });
    this.node.addEventListener('submit', event => event.preventDefault());
  }

  getValue(): Record<string, string> {
    const values: Record<string, string> = {};
    Object.entries(this.inputs).forEach(([name, input]) => {
      values[name] = input.value;
    });
    return values;
  }
}

type Reader = () => string;

/** The run form of a runbook, one widget per typed parameter: dropdowns for choices, lists whose
 * choices follow another parameter (choices_by), checkboxes, number fields with their bounds,
 * multi-selects, the fixed ones read-only. getValue() gives the values that differ from their
 * defaults, as text. */
export class ParameterForm extends Widget {
  private read: Record<string, Reader> = {};
  private initial: Record<string, string> = {};
  private inputs: Record<string, HTMLInputElement | HTMLSelectElement> = {};

  constructor(fields: IParameterField[], intro?: string) {
    super({ node: element('form', { className: 'opshub-form opshub-parameters' }) });
    if (intro) {
      this.node.append(element('p', { className: 'opshub-form-intro' }, intro));
    }
    const followers: { field: IParameterField; fill: (list: unknown[]) => void }[] = [];
    fields.forEach(field => {
      const id = `opshub-p-${field.name}`;
      let input: HTMLInputElement | HTMLSelectElement;
      if (!field.settable) {
        input = element('input', {
          name: field.name,
          type: 'text',
          id,
          readonly: 'readonly',
          disabled: 'disabled'
        });
        input.value = field.default_text || '';
      } else if (field.type === 'boolean' && !field.multiple) {
        const box = element('input', { name: field.name, type: 'checkbox', id });
        box.checked = field.default === true;
        this.read[field.name] = () => asText(field, box.checked);
        input = box;
      } else if (field.choices || field.choices_by) {
        const select = element('select', { name: field.name, id });
        const fill = this.choicesFiller(field, select);
        if (field.choices_by) {
          followers.push({ field, fill });
        } else {
          fill(field.choices || []);
        }
        this.read[field.name] = () => {
          const values = Array.from(select.selectedOptions).map(o => o.value);
          return field.multiple ? JSON.stringify(values) : values[0] || '';
        };
        input = select;
      } else if (field.multiple) {
        const text = element('input', {
          name: field.name,
          type: 'text',
          id,
          placeholder: 'items separated by commas'
        });
        text.value = ((field.default as unknown[]) || []).join(', ');
        this.read[field.name] = () => commaList(text.value);
        input = text;
      } else if (field.type === 'integer' || field.type === 'number') {
        const step = field.type === 'integer' ? '1' : 'any';
        const number = element('input', { name: field.name, type: 'number', id, step });
        (['min', 'max'] as const).forEach(key => {
          if (field[key] !== undefined && field[key] !== null) {
            number.setAttribute(key, String(field[key]));
          }
        });
        number.value = asText(field, field.default);
        this.read[field.name] = () => number.value.trim();
        input = number;
      } else {
        const text = element('input', { name: field.name, type: 'text', id });
        text.value = field.type === 'any' ? field.default_text || '' : asText(field, field.default);
        this.read[field.name] = () => text.value;
        input = text;
      }
      this.inputs[field.name] = input;
      this.node.append(this.row(field, id, input));
    });
    followers.forEach(({ field, fill }) => {
      const parent = this.inputs[(field.depends_on || [])[0]];
      const show = () => fill(followerChoices(field, parent ? parent.value : ''));
      if (parent) {
        parent.addEventListener('change', show);
      }
      show();
    });
    this.initial = this.current();
    this.node.addEventListener('submit', event => event.preventDefault());
  }

  getValue(): Record<string, string> {
    return changedValues(this.initial, this.current());
  }

  private current(): Record<string, string> {
    const values: Record<string, string> = {};
    Object.entries(this.read).forEach(([name, read]) => {
      values[name] = read();
    });
    return values;
  }

  /** Fills a select with a list of choices, keeping what was picked when the list changes. */
  private choicesFiller(field: IParameterField, select: HTMLSelectElement) {
    select.multiple = Boolean(field.multiple);
    const defaults = field.multiple
      ? ((field.default as unknown[]) || []).map(String)
      : [asText(field, field.default)];
    const picked = new Set(defaults);
    return (list: unknown[]) => {
      const keep = new Set(Array.from(select.selectedOptions).map(o => o.value));
      select.textContent = '';
      if (!field.multiple && !list.map(String).includes(asText(field, field.default))) {
        select.append(element('option', { value: '' }, ''));
      }
      list.forEach(choice => {
        const option = element('option', { value: String(choice) }, String(choice));
        option.selected = keep.size ? keep.has(String(choice)) : picked.has(String(choice));
        select.append(option);
      });
      if (field.multiple) {
        select.size = Math.max(2, Math.min(list.length, 6));
      }
    };
  }

  private row(field: IParameterField, id: string, input: HTMLElement): HTMLElement {
    const label = element(
      'label',
      { className: 'opshub-field', for: id },
      element('span', {}, field.name)
    );
    const row = element(
      'div',
      { className: `opshub-param opshub-param-${field.type}`, 'data-name': field.name },
      label,
      input
    );
    if (!field.settable) {
      row.append(
        element(
          'small',
          { className: 'opshub-fixed' },
          "fixed: the runbook's default, it cannot be set"
        )
      );
    }
    row.append(element('small', {}, fieldHint(field)));
    if (field.problem) {
      row.append(element('small', { className: 'opshub-field-problem' }, field.problem));
    }
    return row;
  }
}
