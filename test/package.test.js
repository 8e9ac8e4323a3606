'use strict';

// The package as consumers see it: the ESM entry's named exports, the
// TypeScript types under --strict, the package metadata.
const assert = require('node:assert');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const cordon = require('..');
const pkg = require('../package.json');

const root = path.join(__dirname, '..');

function node(args, options = {}) {
  return spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', timeout: 60000, ...options });
}

describe('package', () => {
  it('should give ESM importers every CommonJS export by name, the same objects, and nothing else', () => {
    const names = Object.keys(cordon).sort();
    const esm = `
      import * as ns from 'cordon';
      import cordon, { ${names.join(', ')} } from 'cordon';
      const { createRequire } = await import('node:module');
      const cjs = createRequire(import.meta.url)('cordon');
      const named = { ${names.join(', ')} };
      const same = Object.keys(named).filter((k) => named[k] !== cjs[k]);
      console.log(JSON.stringify({
        keys: Object.keys(ns).filter((k) => k !== 'default').sort(),
        same, isDefault: cordon === cjs,
        run: runInNewContext('6 * 7'),
        viaDefault: await defaultIsolate.createContext().run('1 + 1'),
      }));`;
    const r = node(['--input-type=module', '-e', esm]);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.deepEqual(out.keys, names);
    assert.deepEqual(out.same, []);
    assert.equal(out.isDefault, true);
    assert.equal(out.run, 42);
    assert.equal(out.viaDefault, 2);
  });

  it('should export Context for instanceof, and refuse to construct it directly', () => {
    const ctx = cordon.createContext();
    assert.ok(ctx instanceof cordon.Context);
    assert.throws(() => new cordon.Context(), { name: 'TypeError', code: 'ERR_ILLEGAL_CONSTRUCTOR' });
    ctx.dispose();
  });

  it('should type-check a consumer under tsc --strict', function () {
    this.timeout(120000);
    const tsc = require.resolve('typescript/bin/tsc');
    const r = node([tsc, '--strict', '--noEmit', '--module', 'nodenext', '--moduleResolution', 'nodenext',
      '--types', 'node', path.join('test', 'types', 'consumer.ts')]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
  });

  it('should declare what a user checks before adopting a native dependency', () => {
    for (const field of ['license', 'repository', 'bugs', 'homepage', 'keywords', 'engines', 'exports', 'types']) {
      assert.ok(pkg[field], `package.json lacks ${field}`);
    }
    for (const major of [20, 22, 24, 26]) {
      assert.match(pkg.engines.node, new RegExp(`\\^${major}\\.`), `engines lacks Node ${major}`);
    }
    assert.ok(pkg.files.includes('prebuilds/') && pkg.files.includes('LICENSE'));
    assert.equal(pkg.scripts.install, 'node-gyp-build');
    assert.ok(pkg.dependencies['node-gyp-build']);
  });
});
