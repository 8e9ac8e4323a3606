'use strict';

// Worker threads in every order (issue: lifetimes). Each shape runs in a
// child process, so that a crash cannot take the runner down: 20 workers
// in a row, with cordon loaded first by the workers alone ("worker-only":
// Node unloads the addon when each worker ends) or by the main thread too.
const assert = require('node:assert/strict');
const path = require('node:path');
const { runNode } = require('./support/util');

const fixture = path.join(__dirname, 'fixtures', 'worker-shapes.js');
const shapes = {
  exit: 'exits on its own with isolates alive',
  'sync-run': 'is terminated during a sync run',
  'async-run': 'is terminated during an async run',
  'async-callback': 'is terminated while an async run waits for a host callback',
  'sync-callback': 'is terminated inside a host callback of a sync run',
  'pending-exit': 'exits with sandbox, import() and host promises pending',
  'pending-terminate': 'is terminated with promises pending and an async run going',
  'exit-in-callback': 'calls process.exit() in a host callback of an async run',
};

async function shape(name, who, rounds) {
  const r = await runNode([fixture, name, who, String(rounds)]);
  assert.equal(r.signal, null, `died of ${r.signal}: ${r.stderr}`);
  assert.equal(r.code, 0, `exited ${r.code}: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /UNREACHABLE/);
  const [ok, n, grown] = r.stdout.trim().split(' ');
  assert.equal(ok, 'ok', r.stdout + r.stderr);
  assert.equal(Number(n), rounds);
  return Number(grown);
}

describe('worker threads', function () {
  this.timeout(180000);

  for (const who of ['worker-only', 'main']) {
    describe(who === 'main' ? 'cordon loaded by the main thread too' : 'cordon loaded only by workers', () => {
      for (const [name, what] of Object.entries(shapes)) {
        it(`should survive 20 workers in a row, each of which ${what}`, async () => {
          await shape(name, who, 20);
        });
      }
    });
  }

  it('should keep RSS flat over 50 workers terminated during async runs', async () => {
    // Each worker heap and sandbox isolate is tens of MB; a leak of either
    // per cycle would grow by far more than this over 48 cycles.
    const grown = await shape('async-run', 'worker-only', 50);
    assert.ok(grown < 96, `RSS grew by ${grown} MB over 48 workers`);
  });
});
