import { onlyLanguageInfoChanged, sameJson } from '../cleanState';

const notebook = (languageInfo: object, source = 'print(1)') => ({
  cells: [
    { cell_type: 'code', id: 'a1', metadata: {}, outputs: [], source, execution_count: null }
  ],
  metadata: {
    kernelspec: { name: 'python3', display_name: 'Python 3 (ipykernel)', language: 'python' },
    language_info: languageInfo,
    opshub: { title: 'Host health check' }
  },
  nbformat: 4,
  nbformat_minor: 5
});
const KERNEL_INFO = { name: 'python', version: '3.11.2', pygments_lexer: 'ipython3' };

describe('sameJson', () => {
  it('ignores the order of keys and compares everything else', () => {
    expect(sameJson({ a: 1, b: [1, { c: null }] }, { b: [1, { c: null }], a: 1 })).toBe(true);
    expect(sameJson({ a: 1 }, { a: 1, b: 2 })).toBe(false);
    expect(sameJson([1, 2], [2, 1])).toBe(false);
    expect(sameJson({ a: [] }, { a: {} })).toBe(false);
    expect(sameJson(null, {})).toBe(false);
  });
});

describe('onlyLanguageInfoChanged', () => {
  it("is true when the kernel's language_info is the only change", () => {
    expect(onlyLanguageInfoChanged(notebook({ name: 'python' }), notebook(KERNEL_INFO))).toBe(true);
  });
  it('is false when anything else changed too', () => {
    expect(
      onlyLanguageInfoChanged(notebook({ name: 'python' }), notebook(KERNEL_INFO, 'print(2)'))
    ).toBe(false);
  });
  it('is false for another language, or without language_info before', () => {
    const bash = { name: 'bash' };
    expect(onlyLanguageInfoChanged(notebook({ name: 'python' }), notebook(bash))).toBe(false);
    const none = { ...notebook({}), metadata: {} };
    expect(onlyLanguageInfoChanged(none, notebook(KERNEL_INFO))).toBe(false);
    expect(onlyLanguageInfoChanged(null, notebook(KERNEL_INFO))).toBe(false);
  });
});
