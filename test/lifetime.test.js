'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const cordon = require('..');
const { sleep, runNode, hostGc, terminateSpinning } = require('./support/util');

const fixture = (name) => path.join(__dirname, 'fixtures', name);

describe('lifetime', () => {
  it('should let 20 processes that use cordon exit normally with code 0', async function () {
    this.timeout(120000);
    const results = [];
    for (let batch = 0; batch < 5; batch++) {
      const runs = [];
      for (let i = 0; i < 4; i++) runs.push(runNode([fixture('exit-normally.js'), String(batch * 4 + i)]));
      results.push(...await Promise.all(runs));
    }
    results.forEach((r, i) => {
      assert.equal(r.signal, null, `process ${i} died of ${r.signal}: ${r.stderr}`);
      assert.equal(r.code, 0, `process ${i} exited ${r.code}: ${r.stderr}`);
      assert.equal(r.stdout.trim(), String(i * 2 + 2));
    });
  });

  it('should survive process.exit() called from a host callback during a run', async () => {
    const code = `
      const cordon = require(${JSON.stringify(path.join(__dirname, '..'))});
      const ctx = cordon.createContext({ bye: () => process.exit(7) });
      cordon.runInContext('bye(); for(;;){}', ctx, { timeout: 10000 });`;
    const r = await runNode(['-e', code]);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.code, 7, r.stderr);
  });

  it('should survive process.exit() while a deadline is armed in another isolate', async () => {
    const code = `
      const cordon = require(${JSON.stringify(path.join(__dirname, '..'))});
      const a = new cordon.Isolate();
      a.createContext().evaluate('globalThis.x = 1', { timeout: 5000 });
      const ctx = cordon.createContext({ bye: () => process.exit(0) });
      cordon.runInContext('bye()', ctx, { timeout: 5000 });`;
    const r = await runNode(['-e', code]);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.code, 0, r.stderr);
  });

  it('should replace a disposed default isolate', async () => {
    const r = await runNode([fixture('default-isolate.js')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'ok');
  });

  it('should let a worker thread create an isolate, run code and exit', async function () {
    this.timeout(60000);
    for (let i = 0; i < 5; i++) {
      const worker = new Worker(fixture('worker-run.js'), { workerData: { mode: 'run', base: i } });
      const [message] = await Promise.all([
        new Promise((resolve) => worker.once('message', resolve)),
        new Promise((resolve, reject) => worker.once('exit', resolve).once('error', reject)),
      ]);
      assert.deepEqual(message, { r: i + 1, timedOut: true });
    }
    assert.equal(cordon.runInContext('"main is fine"', cordon.createContext(), { timeout: 1000 }), 'main is fine');
  });

  it('should survive worker.terminate() while a sandbox loop runs with a long timeout', async function () {
    this.timeout(60000);
    const worker = new Worker(fixture('worker-run.js'), { workerData: { mode: 'spin', timeout: 1500 } });
    assert.deepEqual(await terminateSpinning(worker), []);
    // The main thread, its isolates and a new one all work.
    assert.equal(cordon.runInContext('6 * 7', cordon.createContext(), { timeout: 1000 }), 42);
    const iso = new cordon.Isolate();
    assert.equal(iso.createContext().evaluate('"new isolate"'), 'new isolate');
    iso.dispose();
  });

  it('should free contexts and scripts the host drops, in both heaps', async function () {
    this.timeout(60000);
    const iso = new cordon.Isolate();
    try {
      await hostGc();
      const hostBefore = cordon.liveRecords();
      const engineBefore = iso.getHeapStatistics();
      (() => {
        for (let i = 0; i < 300; i++) {
          const ctx = iso.createContext({ i, cb: () => i });
          ctx.evaluate('globalThis.big = new Array(1000).fill(i); cb()');
          new cordon.Script(`${i}`, { isolate: iso }).runInContext(ctx);
        }
      })();
      assert.ok(cordon.liveRecords().contexts >= hostBefore.contexts);
      await hostGc();
      await sleep(20); // the isolate's wake-up frees what the host released
      iso.gc();
      const hostAfter = cordon.liveRecords();
      const engineAfter = iso.getHeapStatistics();
      assert.ok(hostAfter.contexts - hostBefore.contexts <= 5, `host contexts ${JSON.stringify(hostAfter)}`);
      assert.ok(hostAfter.scripts - hostBefore.scripts <= 5, `host scripts ${JSON.stringify(hostAfter)}`);
      assert.ok(hostAfter.callbacks - hostBefore.callbacks <= 5, `host callbacks ${JSON.stringify(hostAfter)}`);
      assert.ok(engineAfter.contexts - engineBefore.contexts <= 5, `engine contexts ${engineAfter.contexts}`);
      assert.ok(engineAfter.scripts - engineBefore.scripts <= 5, `engine scripts ${engineAfter.scripts}`);
      assert.ok(engineAfter.usedHeapSize < engineBefore.usedHeapSize + 8 * 1024 * 1024,
        `sandbox heap grew from ${engineBefore.usedHeapSize} to ${engineAfter.usedHeapSize}`);
    } finally {
      iso.dispose();
    }
  });

  it('should free every record of a disposed isolate', async () => {
    await hostGc();
    const before = cordon.liveRecords();
    (() => {
      const iso = new cordon.Isolate();
      for (let i = 0; i < 10; i++) iso.createContext({ f: () => i });
      new cordon.Script('1', { isolate: iso });
      iso.dispose();
    })();
    await hostGc();
    assert.deepEqual(cordon.liveRecords(), before);
  });

  it('should run the sandbox\'s foreground tasks (FinalizationRegistry) from the host loop', async function () {
    this.timeout(30000);
    const iso = new cordon.Isolate();
    try {
      const ctx = iso.createContext();
      ctx.evaluate(`
        globalThis.cleaned = 0;
        globalThis.registry = new FinalizationRegistry(() => { cleaned++; });
        (() => { for (let i = 0; i < 100; i++) registry.register({ i }, i); })();`);
      let cleaned = 0;
      for (let i = 0; i < 50 && cleaned === 0; i++) {
        iso.gc();
        await sleep(10);
        cleaned = ctx.evaluate('cleaned');
      }
      assert.ok(cleaned > 0, 'no FinalizationRegistry callback ran');
    } finally {
      iso.dispose();
    }
  });

  it('should bound a FinalizationRegistry callback that loops forever', async function () {
    this.timeout(30000);
    const iso = new cordon.Isolate();
    try {
      const ctx = iso.createContext();
      ctx.evaluate(`
        globalThis.entered = 0;
        globalThis.registry = new FinalizationRegistry(() => { entered++; for (;;) {} });
        (() => { for (let i = 0; i < 10; i++) registry.register({ i }, i); })();`);
      let entered = 0;
      for (let i = 0; i < 100 && entered === 0; i++) {
        iso.gc();
        await sleep(50);
        entered = ctx.evaluate('entered');
      }
      assert.ok(entered > 0, 'the callback never ran');
      assert.equal(ctx.evaluate('"alive"', { timeout: 1000 }), 'alive');
    } finally {
      iso.dispose();
    }
  });

  it('should dispose an isolate with foreground tasks still queued', () => {
    for (let i = 0; i < 20; i++) {
      const iso = new cordon.Isolate();
      const ctx = iso.createContext();
      ctx.evaluate('globalThis.r = new FinalizationRegistry(() => {}); for (let i = 0; i < 1000; i++) r.register({}, i)');
      iso.gc();
      iso.dispose();
    }
  });
});
