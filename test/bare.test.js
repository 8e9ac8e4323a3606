'use strict';

// Bare scripts: nothing but cordon's own work keeps the event loop alive,
// as CJS and as ESM with top-level await.
const assert = require('node:assert/strict');
const path = require('node:path');
const { runNode } = require('./support/util');

const index = path.join(__dirname, '..', 'lib', 'index.js');
const body = (load) => `
  const load = cordon.compileFunction('return import("./m.js")', [], {
    filename: 'main.js',
    importModuleDynamically: () => 'export default 42',
  });
  ${load}`;

describe('bare scripts', function () {
  this.timeout(30000);

  it('should keep a CJS script alive while it awaits import() from a compiled function', async () => {
    const code = `const cordon = require(${JSON.stringify(index)});` +
      body('load().then((ns) => console.log(ns.default === 42 ? "shape ok" : "bad"));');
    const r = await runNode(['-e', code]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'shape ok');
  });

  it('should keep an ESM script alive at a top-level await of import() from a compiled function', async () => {
    const code = `import cordon from ${JSON.stringify(index)};` +
      body('const ns = await load(); console.log(ns.default === 42 ? "shape ok" : "bad");');
    const r = await runNode(['--input-type=module', '-e', code]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'shape ok');
  });
});
