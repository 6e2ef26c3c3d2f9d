import { driftMessage, driftReasons } from '../driftReasons';
import { dashboardName, parseGroups } from '../publishRequest';
import { outcomeText, runPageUrl } from '../runProgress';

describe('dashboardName: the name offered for a notebook', () => {
  it('is the file name in lower-case letters, digits and dashes', () => {
    expect(dashboardName('runbooks/TLS Certificate_Expiry.ipynb')).toBe('tls-certificate-expiry');
    expect(dashboardName('host-health-check.ipynb')).toBe('host-health-check');
    expect(dashboardName('runbooks/__ops!!.ipynb')).toBe('ops');
  });
});

describe('parseGroups', () => {
  it('splits on commas and drops empty names', () => {
    expect(parseGroups(' ops, dba ,,')).toEqual(['ops', 'dba']);
    expect(parseGroups('')).toEqual([]);
  });
});

describe('outcomeText', () => {
  it("names the outcome from opshub run's exit code", () => {
    expect(outcomeText(0)).toBe('The run succeeded.');
    expect(outcomeText(1)).toBe('The run failed.');
    expect(outcomeText(2)).toBe('The run stopped (exit code 2).');
    expect(outcomeText(null)).toBe('The run stopped (exit code null).');
  });
  it('links the run page under the runs prefix', () => {
    expect(runPageUrl('/services/opshub/runs/', 'abc')).toBe('/services/opshub/runs/abc');
  });
});

describe('drift', () => {
  it('says nothing for a runbook as the repository has it, or a notebook that is no runbook', () => {
    expect(
      driftMessage({ is_runbook: true, drift: false, upstream_moved: false, title: 'T' })
    ).toBeNull();
    expect(driftMessage({ is_runbook: false, drift: true, upstream_moved: true })).toBeNull();
  });
  it('names each reason', () => {
    expect(driftReasons({ is_runbook: true, drift: true, upstream_moved: true })).toHaveLength(2);
    expect(driftMessage({ is_runbook: true, drift: true, title: 'Host health check' })).toBe(
      'Host health check: your copy differs from the repository (local edits). Runs of it are recorded with drift.'
    );
    expect(driftMessage({ is_runbook: true, upstream_moved: true, title: 'T' })).toContain(
      "the team's repository has a newer version"
    );
  });
});
