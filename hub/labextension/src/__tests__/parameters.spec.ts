import {
  IParameterField,
  asText,
  changedValues,
  commaList,
  fieldHint,
  followerChoices,
  isLiveRun,
  reviewLines
} from '../parameters';

const field = (extra: Partial<IParameterField>): IParameterField => ({
  name: 'p',
  type: 'string',
  settable: true,
  ...extra
});

describe('asText: values as `opshub run -p` takes them', () => {
  it('writes lists as JSON lists of strings', () => {
    expect(asText(field({ multiple: true, type: 'integer' }), [1, 2])).toBe('["1","2"]');
    expect(asText(field({ multiple: true }), null)).toBe('[]');
  });
  it('writes booleans as true and false', () => {
    expect(asText(field({ type: 'boolean' }), true)).toBe('true');
    expect(asText(field({ type: 'boolean' }), false)).toBe('false');
  });
  it('writes nothing for no value, and numbers as they are', () => {
    expect(asText(field({}), null)).toBe('');
    expect(asText(field({}), undefined)).toBe('');
    expect(asText(field({ type: 'number' }), 2.5)).toBe('2.5');
  });
});

describe('commaList', () => {
  it('splits on commas, trims and drops empty items', () => {
    expect(commaList('localhost, db01 ,, ')).toBe('["localhost","db01"]');
    expect(commaList('')).toBe('[]');
  });
});

describe('fieldHint', () => {
  it('says the description, the type and the bounds', () => {
    const hint = fieldHint(field({ type: 'integer', description: 'Warn above', min: 1, max: 100 }));
    expect(hint).toBe('Warn above · integer, min 1, max 100');
  });
  it('says a list of what, and leaves out a missing description', () => {
    expect(fieldHint(field({ multiple: true }))).toBe('list of string');
    expect(fieldHint(field({ type: 'number', min: null, max: 0 }))).toBe('number, max 0');
  });
});

describe('changedValues: only what the person changed is sent', () => {
  it('keeps the changed values', () => {
    const initial = { hosts: '["localhost"]', fail_on_problem: 'true' };
    expect(changedValues(initial, { hosts: '["localhost"]', fail_on_problem: 'false' })).toEqual({
      fail_on_problem: 'false'
    });
    expect(changedValues(initial, initial)).toEqual({});
  });
});

describe('isLiveRun', () => {
  const dryRun = field({ name: 'dry_run', type: 'boolean', default: true });
  it('is live when dry_run is turned off', () => {
    expect(isLiveRun([dryRun], { dry_run: 'false' })).toBe(true);
    expect(isLiveRun([dryRun], {})).toBe(false);
    expect(isLiveRun([dryRun], { dry_run: 'true' })).toBe(false);
  });
  it('is live when dry_run defaults to false and stays so', () => {
    expect(isLiveRun([{ ...dryRun, default: false }], {})).toBe(true);
  });
  it('is never live without a boolean dry_run', () => {
    expect(isLiveRun([field({ name: 'dry_run' })], { dry_run: 'false' })).toBe(false);
    expect(isLiveRun([], {})).toBe(false);
  });
});

describe('reviewLines', () => {
  it('lists every parameter with its value, saying which were set here', () => {
    const fields = [
      field({ name: 'stack', default: 'lab' }),
      field({ name: 'ssh_options', settable: false, default_text: "['-o', 'BatchMode=yes']" }),
      field({ name: 'dry_run', type: 'boolean', default: true })
    ];
    expect(reviewLines(fields, { stack: 'db', dry_run: 'false' })).toEqual([
      { text: 'stack = db', set: true },
      { text: "ssh_options = ['-o', 'BatchMode=yes']", set: false },
      { text: 'dry_run = false', set: true }
    ]);
  });
});

describe('followerChoices', () => {
  it("gives the choices for the parent's value, none for an unknown one", () => {
    const hosts = field({ name: 'hosts', choices_by: { db: ['db01', 'db02'] } });
    expect(followerChoices(hosts, 'db')).toEqual(['db01', 'db02']);
    expect(followerChoices(hosts, 'web')).toEqual([]);
    expect(followerChoices(field({}), 'db')).toEqual([]);
  });
});
