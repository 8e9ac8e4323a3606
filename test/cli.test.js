'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const bin = path.join(__dirname, '..', 'bin', 'cordon');
const cli = (...args) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 30000 });

describe('bin/cordon', () => {
  it('should print the result of -e', () => {
    const r = cli('-e', '1 + 1', '--timeout', '100');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '2\n');
  });

  it('should print objects as JSON', () => {
    const r = cli('-e', '({ a: [1, "b"] })');
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { a: [1, 'b'] });
  });

  it('should run a file and name it in stack traces', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cordon-cli-'));
    const file = path.join(dir, 'job.js');
    fs.writeFileSync(file, 'const x = 6;\nx * 7');
    assert.equal(cli(file).stdout, '42\n');
    fs.writeFileSync(file, '\n\nnull.boom');
    const r = cli(file);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /TypeError/);
    assert.ok(r.stderr.includes(`${file}:3`), r.stderr);
  });

  it('should exit 3 on a timeout', () => {
    const r = cli('-e', 'for(;;){}', '-t', '50');
    assert.equal(r.status, 3);
    assert.match(r.stderr, /timed out after 50ms/);
  });

  it('should exit 4 on the memory limit', () => {
    const r = cli('-e', 'const a = []; for (;;) a.push(new Array(1e5).fill(1))', '-m', '16');
    assert.equal(r.status, 4, r.stderr);
    assert.match(r.stderr, /memory limit/);
    // One line at the default limit, and one huge step (V8 would end the
    // process with its fatal out-of-memory error: exit 133).
    for (const code of ['const a = []; for (;;) a.push(1)', 'new Array(2e7).fill(1.5).length + new Array(2e7).fill(2.5).length']) {
      const big = cli('-e', code, '-m', code.includes('fill') ? '32' : '128');
      assert.equal(big.status, 4, `${code}: ${big.stderr}`);
    }
  });

  it('should exit 2 on bad usage', () => {
    assert.equal(cli().status, 2);
    assert.equal(cli('-e').status, 2);
    assert.equal(cli('-e', '1', '--timeout', 'soon').status, 2);
    assert.equal(cli('-e', '1', '--nope').status, 2);
    assert.equal(cli('/no/such/file.js').status, 2);
  });
});
