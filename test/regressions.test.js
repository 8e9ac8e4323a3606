'use strict';

// Lifetime and termination regressions found in review, one test each.
// Run under AddressSanitizer in CI, where a use-after-free shows.

const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const cordon = require('..');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const root = path.join(__dirname, '..');

describe('regressions', () => {
  it('should deliver a promise inside the value a promise settled with', async () => {
    const ctx = cordon.createContext();
    const outer = await cordon.runInContext('(async () => { await 0; return { p: Promise.resolve(1), f() {} } })()', ctx);
    assert.equal(typeof outer.f, 'function');
    assert.equal(await outer.p, 1);
  });

  it('should defer a dispose called from a FinalizationRegistry callback', async () => {
    const iso = new cordon.Isolate();
    const ctx = iso.createContext({ kill: () => iso.dispose() });
    ctx.evaluate('globalThis.fr = new FinalizationRegistry(() => kill()); fr.register({}, 1);');
    for (let i = 0; i < 20 && !iso.isDisposed; i++) {
      try {
        ctx.evaluate('let b = []; for (let i = 0; i < 2e5; i++) b.push({ i }); b = null; 1');
        iso.gc();
      } catch (e) {
        assert.equal(e.code, 'ERR_ISOLATE_DISPOSED');
      }
      await sleep(5);
    }
    assert.equal(iso.isDisposed, true);
  });

  it('should stop, not crash, when a host value would pass the sandbox memory limit', () => {
    const iso = new cordon.Isolate({ memoryLimitMB: 16 });
    try {
      const ctx = iso.createContext({ read: () => new Uint8Array(4 << 20) });
      ctx.evaluate('globalThis.keep = []; for (let i = 0; i < 14; i++) keep.push(new ArrayBuffer(1 << 20))');
      assert.throws(() => ctx.evaluate('read().length'), { code: 'ERR_MEMORY_LIMIT' });
      ctx.evaluate('keep = null');
      iso.gc();
      assert.equal(ctx.evaluate('read().length'), 4 << 20);
    } finally {
      iso.dispose();
    }
  });

  it('should drop the microtasks of a stopped run instead of running them later without a deadline', () => {
    const r = spawnSync(process.execPath, ['-e', `
      const cordon = require(${JSON.stringify(root)});
      const iso = new cordon.Isolate();
      const a = iso.createContext();
      try { a.evaluate('Promise.resolve().then(() => { for (;;); }); for (;;);', { timeout: 50 }); }
      catch (e) { console.log(e.code); }
      a.dispose();
      console.log(iso.createContext().evaluate('"b ran"'));
    `], { encoding: 'utf8', timeout: 20000 });
    assert.equal(r.signal, null, 'the next run hung');
    assert.equal(r.stdout, 'ERR_SCRIPT_EXECUTION_TIMEOUT\nb ran\n');
  });

  it('should survive a dispose from a host reaction while settlements are being delivered', async () => {
    const iso = new cordon.Isolate();
    const ctx = iso.createContext();
    const [p1, p2] = ctx.evaluate('[(async () => { await 0; return 1 })(), (async () => { await 0; return { f() {} } })()]');
    p1.then(() => iso.dispose());
    const second = await p2.then((v) => typeof v.f, (e) => e.code);
    assert.ok(['function', 'ERR_ISOLATE_DISPOSED'].includes(second), second);
    assert.equal(iso.isDisposed, true);
  });

  it('should reject module linking when the isolate went away during the import callback', async () => {
    const iso = new cordon.Isolate();
    const ctx = iso.createContext();
    const dep = new cordon.Module('export default 1', { context: ctx, filename: 'dep.mjs' });
    const m = new cordon.Module('import x from "dep"; export default x', {
      context: ctx,
      importModuleDynamically: async () => {
        await sleep(10);
        return dep;
      },
    });
    setTimeout(() => iso.dispose(), 1);
    await assert.rejects(m.evaluate(), { code: 'ERR_ISOLATE_DISPOSED' });
  });

  it('should not run a function\'s length getter when it leaves the sandbox', async () => {
    const ctx = cordon.createContext();
    const out = cordon.runInContext(`({ p: new Promise((r) => { globalThis.r = r; }),
      f: Object.defineProperty(function () {}, 'length', { get() { for (;;); } }) })`, ctx, { timeout: 1000 });
    assert.equal(out.f.length, 0);
    cordon.runInContext('r(5)', ctx);
    assert.equal(await out.p, 5);
  });

  it('should keep an outer deadline after an inner run hit the memory limit', () => {
    const iso = new cordon.Isolate({ memoryLimitMB: 32 });
    try {
      const ctx = iso.createContext({
        inner: () => {
          try {
            ctx.evaluate('(() => { const a = []; for (;;) a.push(new Array(1e5).fill(0)) })()');
          } catch (e) {
            return e.code;
          }
          return 'no';
        },
      });
      assert.throws(() => ctx.evaluate('const code = inner(); for (;;) {}', { timeout: 200 }),
        { code: 'ERR_SCRIPT_EXECUTION_TIMEOUT' });
    } finally {
      iso.dispose();
    }
  });
});
