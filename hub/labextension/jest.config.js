// jest runs the pure logic of the extension (src/__tests__/*.spec.ts) with ts-jest: the modules it tests
// import nothing from JupyterLab, so no browser and no bundler are needed.
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  testRegex: 'src/__tests__/.*\\.spec\\.ts$',
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: { types: ['jest'] } }]
  }
};
