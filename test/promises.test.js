'use strict';

const assert = require('node:assert/strict');
const cordon = require('..');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('promises across the boundary', () => {
  it('should turn a sandbox promise into a host promise that settles with a copy', async () => {
    const ctx = cordon.createContext();
    const p = cordon.runInContext('Promise.resolve({ n: 41 }).then((o) => ({ n: o.n + 1 }))', ctx);
    assert.ok(p instanceof Promise);
    assert.deepEqual(await p, { n: 42 });
  });

  it('should reject the host promise with an error of the same name and message', async () => {
    const ctx = cordon.createContext();
    await assert.rejects(cordon.runInContext('Promise.reject(new RangeError("nope"))', ctx),
      (e) => e instanceof RangeError && e.message === 'nope');
    await assert.rejects(cordon.runInContext('(async () => { throw 7 })()', ctx), (e) => e === 7);
  });

  it('should turn async sandbox functions into host functions returning promises', async () => {
    const fn = cordon.runInContext('async (x) => { await null; return x * 3 }', cordon.createContext());
    assert.equal(await fn(7), 21);
  });

  it('should turn a host promise into a sandbox promise, settled later from the host loop', async () => {
    const ctx = cordon.createContext({
      later: (v, ms) => new Promise((resolve) => setTimeout(() => resolve(v), ms)),
      fail: () => Promise.reject(new TypeError('host says no')),
    });
    assert.deepEqual(await cordon.runInContext(
      '(async () => { const a = await later(1, 10); const b = await later(a + 1, 5); return [a, b] })()', ctx), [1, 2]);
    assert.deepEqual(await cordon.runInContext(
      'fail().catch((e) => [e instanceof TypeError, e.message])', ctx), [true, 'host says no']);
    const passIn = cordon.runInContext('(p) => p.then((v) => v + "!")', ctx);
    assert.equal(await passIn(sleep(5).then(() => 'host')), 'host!');
  });

  // The reactions a run queues share its bound: once one has used it up,
  // the run's sandbox code is not resumed again.
  it("should run the sandbox reactions to host promises under their run's bound", async () => {
    const ctx = cordon.createContext({ later: () => sleep(5) }, { timeout: 50 });
    cordon.runInContext('globalThis.after = 0; later().then(() => { for (;;) {} }); later().then(() => { after = 1 })', ctx);
    await sleep(200);
    // The looping reaction was stopped at the run's deadline, the other one
    // came too late to run, and the context still works.
    assert.equal(cordon.runInContext('after', ctx), 0);
    assert.equal(cordon.runInContext('"alive"', ctx), 'alive');
  });

  it('should bound each reaction by itself with untilSettled: false', async () => {
    const ctx = cordon.createContext({ later: () => sleep(5) }, { timeout: 50 });
    cordon.runInContext('globalThis.after = 0; later().then(() => { for (;;) {} }); later().then(() => { after = 1 })',
      ctx, { untilSettled: false });
    await sleep(200);
    assert.equal(cordon.runInContext('after', ctx), 1);
  });

  it('should carry functions inside a settled value', async () => {
    const ctx = cordon.createContext();
    const api = await cordon.runInContext('Promise.resolve({ add: (a, b) => a + b })', ctx);
    assert.equal(api.add(2, 3), 5);
  });

  it('should reject promises pending when the isolate is disposed with ERR_ISOLATE_DISPOSED', async () => {
    const iso = new cordon.Isolate();
    const ctx = iso.createContext();
    const never = cordon.runInContext('new Promise(() => {})', ctx);
    iso.dispose();
    await assert.rejects(never, { code: 'ERR_ISOLATE_DISPOSED' });
  });

  it('should reject a host promise whose sandbox promise was collected unsettled', async () => {
    const iso = new cordon.Isolate();
    try {
      const ctx = iso.createContext();
      const orphan = cordon.runInContext('new Promise(() => {})', ctx);
      const settled = orphan.then(() => 'fulfilled', (e) => e.message);
      for (let i = 0; i < 5; i++) {
        iso.gc();
        await tick();
      }
      assert.match(await settled, /collected without ever settling/);
    } finally {
      iso.dispose();
    }
  });

  it('should not keep the process alive for a sandbox promise that never settles', async () => {
    const { spawnSync } = require('node:child_process');
    const r = spawnSync(process.execPath, ['-e', `
      const cordon = require(${JSON.stringify(require('node:path').join(__dirname, '..'))});
      cordon.runInContext('new Promise(() => {})', cordon.createContext()).then(() => console.log('no'));
      cordon.runInContext('Promise.resolve(1)', cordon.createContext()).then((v) => console.log('settled', v));
    `], { encoding: 'utf8', timeout: 20000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'settled 1\n');
  });

  it('should report promises left rejected with no handler on the isolate, and never throw into the host', async () => {
    const iso = new cordon.Isolate();
    try {
      const ctx = iso.createContext();
      const reports = [];
      iso.on('unhandledRejection', (reason, context) => reports.push([reason, context]));
      ctx.evaluate('Promise.reject(new TypeError("lost")); 1');
      ctx.evaluate('const p = Promise.reject(new Error("handled later")); p.catch(() => {}); 1');
      ctx.evaluate('(async () => { throw 42 })(); 1');
      await sleep(20);
      assert.equal(reports.length, 2);
      assert.ok(reports[0][0] instanceof TypeError);
      assert.equal(reports[0][0].message, 'lost');
      assert.equal(reports[0][1], ctx);
      assert.equal(reports[1][0], 42);
      // Without a listener: dropped, and the process is fine.
      iso.removeAllListeners('unhandledRejection');
      ctx.evaluate('Promise.reject(new Error("nobody listens")); 1');
      await sleep(20);
      assert.equal(ctx.evaluate('"alive"'), 'alive');
    } finally {
      iso.dispose();
    }
  });

  it('should free promise records once delivered', async () => {
    const iso = new cordon.Isolate();
    try {
      const ctx = iso.createContext({ later: (v) => sleep(1).then(() => v) });
      for (let i = 0; i < 200; i++) {
        assert.equal(await cordon.runInContext(`later(${i}).then((x) => x + 1)`, ctx), i + 1);
      }
      for (let i = 0; i < 3; i++) {
        global.gc();
        await tick();
        iso.gc();
        await tick();
      }
      const stats = iso.getHeapStatistics();
      assert.ok(stats.promises < 10, `promise records: ${stats.promises}`);
      assert.ok(stats.resolvers < 10, `resolver records: ${stats.resolvers}`);
    } finally {
      iso.dispose();
    }
  });
});
