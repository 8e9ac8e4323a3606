'use strict';

const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const path = require('node:path');
const cordon = require('..');

const tick = () => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function gcBoth(iso, rounds = 3) {
  for (let i = 0; i < rounds; i++) {
    global.gc();
    await tick();
    iso.gc();
    await tick();
  }
}

describe('dynamic import()', () => {
  it('should route import() of a compiled function to its callback, with referrer and attributes', async () => {
    const calls = [];
    const fn = cordon.compileFunction('return import("./m.js", { with: { type: "x" } })', [], {
      filename: 'main.js',
      importModuleDynamically(specifier, referrer, attributes) {
        calls.push({ specifier, referrer, attributes });
        return 'export default 42; export const url = import.meta.url;';
      },
    });
    assert.deepEqual(await fn(), { default: 42, url: './m.js' });
    assert.equal(calls.length, 1);
    assert.equal(calls[0].specifier, './m.js');
    assert.equal(calls[0].referrer, fn);
    assert.deepEqual(calls[0].attributes, { type: 'x' });
  });

  it('should accept { source, filename }, a promise, and a cordon.Module', async () => {
    const ctx = cordon.createContext();
    const mod = new cordon.Module('export const from = "module"', { context: ctx, filename: 'given.mjs' });
    const fn = cordon.compileFunction('return Promise.all([import("a"), import("b"), import("c")])', [], {
      parsingContext: ctx,
      async importModuleDynamically(specifier) {
        await sleep(5);
        if (specifier === 'a') return { source: 'export const u = import.meta.url', filename: 'file:///a.mjs' };
        if (specifier === 'b') return Promise.resolve('export default "b"');
        return mod;
      },
    });
    assert.deepEqual(await fn(), [{ u: 'file:///a.mjs' }, { default: 'b' }, { from: 'module' }]);
  });

  it('should reject import() without a callback with ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING', async () => {
    await assert.rejects(cordon.runInContext('import("x")', cordon.createContext()),
      (e) => e instanceof TypeError && e.code === 'ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING');
    const inside = cordon.runInContext('import("x").catch((e) => [e.name, e.code])', cordon.createContext());
    assert.deepEqual(await inside, ['TypeError', 'ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING']);
  });

  it('should use the context\'s callback for code compiled without one', async () => {
    const seen = [];
    const ctx = cordon.createContext({}, {
      importModuleDynamically: (s) => {
        seen.push(s);
        return `export default ${JSON.stringify(s)}`;
      },
    });
    assert.deepEqual(await cordon.runInContext('import("one").then((m) => m.default)', ctx), 'one');
    assert.equal(await cordon.compileFunction('return import("two").then((m) => m.default)', [], { parsingContext: ctx })(),
      'two');
    assert.deepEqual(seen, ['one', 'two']);
  });

  it('should route the same source compiled twice with two callbacks to each its own', async () => {
    const ctx = cordon.createContext();
    const source = 'return import("x").then((m) => m.who)';
    const a = cordon.compileFunction(source, [], { parsingContext: ctx, importModuleDynamically: () => ({ source: 'export const who = "a"', filename: 'a' }) });
    const b = cordon.compileFunction(source, [], { parsingContext: ctx, importModuleDynamically: () => ({ source: 'export const who = "b"', filename: 'b' }) });
    assert.equal(await a(), 'a');
    assert.equal(await b(), 'b');
    const s1 = 'import("y").then((m) => m.who)';
    const ca = cordon.createContext();
    const r1 = cordon.runInContext(s1, ca, { importModuleDynamically: () => ({ source: 'export const who = 1', filename: '1' }) });
    const r2 = cordon.runInContext(s1, ca, { importModuleDynamically: () => ({ source: 'export const who = 2', filename: '2' }) });
    assert.deepEqual([await r1, await r2], [1, 2]);
  });

  it('should let a nested function kept in the sandbox import through its own script\'s callback', async () => {
    const ctx = cordon.createContext();
    cordon.runInContext('globalThis.later = () => import("k").then((m) => m.v)', ctx, {
      importModuleDynamically: () => ({ source: 'export const v = "kept"', filename: 'k' }),
    });
    await gcBoth(ctx.isolate);
    assert.equal(await cordon.runInContext('later()', ctx), 'kept');
  });

  it('should keep a nested function\'s callback after the outer function is dropped (no use-after-free)', async () => {
    const iso = new cordon.Isolate();
    try {
      const ctx = iso.createContext();
      const referrers = [];
      let nested = (() => {
        const fn = cordon.compileFunction('function nested() { return import("x").then((m) => m.n) } return nested', [], {
          parsingContext: ctx,
          importModuleDynamically(specifier, referrer) {
            referrers.push(referrer);
            return { source: `export const n = ${referrers.length}`, filename: `x${referrers.length}` };
          },
        });
        return fn();
      })();
      for (let i = 0; i < 5; i++) await gcBoth(iso);
      assert.equal(await nested(), 1);
      // The referrer is a working handle to the outer compiled function.
      const outer = referrers[0];
      assert.equal(typeof outer, 'function');
      const again = outer();
      assert.equal(typeof again, 'function');
      assert.equal(await again(), 2);
      nested = null;
    } finally {
      iso.dispose();
    }
  });

  it('should hand over a new Script handle when the host dropped its own', async () => {
    const iso = new cordon.Isolate();
    try {
      const ctx = iso.createContext();
      const referrers = [];
      (() => {
        const script = new cordon.Script('globalThis.runs = (globalThis.runs || 0) + 1; globalThis.f = () => import("s")', {
          isolate: iso,
          importModuleDynamically(specifier, referrer) {
            referrers.push(referrer);
            return { source: 'export default "s"', filename: `s${referrers.length}` };
          },
        });
        script.runInContext(ctx);
      })();
      await gcBoth(iso, 5);
      assert.deepEqual(await cordon.runInContext('f()', ctx), { default: 's' });
      const script = referrers[0];
      assert.ok(script instanceof cordon.Script);
      script.runInContext(ctx);
      assert.equal(cordon.runInContext('runs', ctx), 2);
    } finally {
      iso.dispose();
    }
  });

  it('should give the sandbox a rejection when the callback throws or returns nonsense', async () => {
    const ctx = cordon.createContext();
    const run = (cb) => cordon.runInContext('import("z").then(() => "no", (e) => [e.name, e.message, e.code])', ctx,
      { importModuleDynamically: cb });
    assert.deepEqual(await run(() => { throw new RangeError('cannot load'); }), ['RangeError', 'cannot load', undefined]);
    assert.deepEqual(await run(async () => { throw new TypeError('async no'); }), ['TypeError', 'async no', undefined]);
    const bad = await run(() => 42);
    assert.equal(bad[0], 'TypeError');
    assert.equal(bad[2], 'ERR_VM_INVALID_IMPORT_RESULT');
    const other = new cordon.Isolate();
    try {
      const foreign = new cordon.Module('export default 1', { context: other.createContext() });
      const r = await run(() => foreign);
      assert.equal(r[2], 'ERR_VM_MODULE_DIFFERENT_CONTEXT');
      assert.match(r[1], /another isolate/);
    } finally {
      other.dispose();
    }
    const syntax = await run(() => 'export const = ;');
    assert.equal(syntax[0], 'SyntaxError');
    const throwing = await run(() => ({ source: 'throw new EvalError("in module")', filename: 'throwing' }));
    assert.deepEqual(throwing.slice(0, 2), ['EvalError', 'in module']);
  });
});

describe('cordon.Module', () => {
  it('should evaluate a graph with static imports and a cycle once each', async () => {
    const ctx = cordon.createContext({ log: () => {} });
    cordon.runInContext('globalThis.order = []', ctx);
    const sources = {
      'a.mjs': 'import { b } from "b.mjs"; order.push("a"); export const a = "A" + b;',
      'b.mjs': 'import { c } from "c.mjs"; order.push("b"); export const b = "B" + c;',
      'c.mjs': 'import * as a from "a.mjs"; order.push("c"); export const c = "C"; export function late() { return a.a; }',
    };
    const requested = [];
    const load = (specifier, referrer) => {
      requested.push([specifier, referrer.filename]);
      return { source: sources[specifier], filename: specifier };
    };
    const main = new cordon.Module('import { a } from "a.mjs"; import { late } from "c.mjs"; globalThis.result = [a, late()];',
      { context: ctx, filename: 'main.mjs', importModuleDynamically: load });
    await main.evaluate();
    assert.deepEqual(cordon.runInContext('result', ctx), ['ABC', 'ABC']);
    assert.deepEqual(cordon.runInContext('order', ctx), ['c', 'b', 'a']);
    // A second import of the same keys evaluates nothing again.
    const again = await cordon.runInContext('import("a.mjs").then((m) => m.a)', ctx, { importModuleDynamically: load });
    assert.equal(again, 'ABC');
    assert.deepEqual(cordon.runInContext('order', ctx), ['c', 'b', 'a']);
    assert.ok(requested.some(([s, r]) => s === 'a.mjs' && r === 'main.mjs'));
  });

  it('should set import.meta.url to the filename and support top-level await', async () => {
    const ctx = cordon.createContext({ wait: () => sleep(5) });
    const m = new cordon.Module('await wait(); globalThis.meta = import.meta.url;',
      { context: ctx, filename: 'file:///app/top.mjs' });
    await m.evaluate();
    assert.equal(cordon.runInContext('meta', ctx), 'file:///app/top.mjs');
  });

  it('should throw a SyntaxError for bad module source, and validate its arguments', () => {
    assert.throws(() => new cordon.Module('export default ;', { filename: 'bad.mjs' }),
      (e) => e instanceof SyntaxError && /bad\.mjs/.test(e.stack));
    assert.throws(() => new cordon.Module(1), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => new cordon.Module('', { context: {} }), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => new cordon.Module('', { importModuleDynamically: 1 }), { code: 'ERR_INVALID_ARG_TYPE' });
  });

  it('should reject evaluate() when a static import has no callback', async () => {
    const m = new cordon.Module('import "x";');
    await assert.rejects(m.evaluate(), { code: 'ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING' });
  });
});

describe('import() lifetimes', () => {
  // Seed 000: without a forced collection, in child processes (nothing
  // else collects there), both shapes at once. The handles report the
  // sandbox memory they hold to the host's collector and release it from
  // its (synchronous) finalizers. CORDON_SEED_ITERATIONS lets CI run fewer
  // on the lines after the first (the same paths, fewer times).
  it('should keep seed 000\'s loop flat with no explicit GC, in one context and with a new context per call', async function () {
    this.timeout(900000);
    const iterations = Number(process.env.CORDON_SEED_ITERATIONS) || (process.env.CORDON_ASAN === '1' ? 1000 : 10000);
    const child = path.join(__dirname, 'support', 'seed000-child.js');
    const run = (shape) => new Promise((resolve) => {
      execFile(process.execPath, [child, shape, String(iterations)], { timeout: 890000 },
        (error, stdout, stderr) => resolve({ shape, error, stdout, stderr }));
    });
    for (const r of await Promise.all([run('one'), run('new')])) {
      assert.equal(r.error, null, `${r.shape}: ${r.error?.message} ${r.stderr}`);
      const out = JSON.parse(r.stdout);
      const what = `${r.shape}: ${r.stdout}`;
      // A leak would hold 10 000 sources of 1.2 MB (12 GB here before).
      assert.ok(out.peak < 256 * 1024 * 1024, `RSS grew ${out.peak >> 20} MB: ${what}`);
      assert.ok(out.heapPeak < 128 * 1024 * 1024, `sandbox heap peaked at ${out.heapPeak >> 20} MB: ${what}`);
      assert.ok(out.functions < 200, what);
      assert.ok(out.importHosts < 200, what);
      assert.ok(out.contexts < 200, what);
    }
  });

  it('should free every record of seed 000 once both heaps are collected (forced GC, the second check)', async function () {
    this.timeout(600000);
    const iso = new cordon.Isolate({ memoryLimitMB: 256 });
    try {
      const ctx = iso.createContext({ console: { log: () => {} } });
      const code = `console.log("${'hello world '.repeat(1e5)}");`;
      await gcBoth(iso);
      const hostBefore = cordon.liveRecords();
      const engineBefore = iso.getHeapStatistics();
      const iterations = process.env.CORDON_ASAN === '1' ? 200 : 1000;
      for (let i = 0; i < iterations; i++) {
        cordon.compileFunction(code, [], { parsingContext: ctx, importModuleDynamically: () => {} });
        if (i % 100 === 0) await gcBoth(iso, 1);
      }
      await gcBoth(iso, 5);
      const hostAfter = cordon.liveRecords();
      const engineAfter = iso.getHeapStatistics();
      assert.ok(hostAfter.functions - hostBefore.functions < 5, `host functions ${JSON.stringify(hostAfter)}`);
      assert.ok(engineAfter.importHosts - engineBefore.importHosts < 5, `import hosts ${engineAfter.importHosts}`);
      assert.ok(engineAfter.functions - engineBefore.functions < 5, `engine functions ${engineAfter.functions}`);
      assert.ok(engineAfter.usedHeapSize < engineBefore.usedHeapSize + 8 * 1024 * 1024,
        `sandbox heap ${engineBefore.usedHeapSize} -> ${engineAfter.usedHeapSize}`);
    } finally {
      iso.dispose();
    }
  });

  it('should survive disposing the context or isolate while a callback is pending', async () => {
    for (const what of ['context', 'isolate']) {
      const iso = new cordon.Isolate();
      const ctx = iso.createContext();
      let release;
      const gate = new Promise((resolve) => { release = resolve; });
      const pending = cordon.runInContext('import("slow")', ctx, {
        importModuleDynamically: () => gate.then(() => 'export default 1'),
      });
      await tick();
      if (what === 'context') ctx.dispose();
      else iso.dispose();
      release();
      await sleep(10);
      const outcome = await Promise.race([pending.then(() => 'fulfilled', (e) => e.code), sleep(50).then(() => 'pending')]);
      assert.ok(['ERR_ISOLATE_DISPOSED', 'pending'].includes(outcome), `${what}: ${outcome}`);
      iso.dispose();
    }
    // The process is fine.
    assert.equal(cordon.runInNewContext('1 + 1'), 2);
  });
});

describe('module.namespace', () => {
  it('should copy the exports once evaluated, again at each read, and refuse before', async () => {
    const ctx = cordon.createContext();
    const m = new cordon.Module('export let n = 1; export function inc() { return ++n } export default { a: [1] }; await 0;',
      { context: ctx });
    assert.throws(() => m.namespace, { code: 'ERR_VM_MODULE_STATUS' });
    await m.evaluate();
    const ns = m.namespace;
    assert.deepEqual(Object.keys(ns).sort(), ['default', 'inc', 'n']);
    assert.equal(ns.n, 1);
    assert.equal(ns.inc(), 2);
    assert.equal(m.namespace.n, 2);
    assert.deepEqual(ns.default, { a: [1] });
    ctx.dispose();
    assert.throws(() => m.namespace, { code: 'ERR_ISOLATE_DISPOSED' });
  });

  it('should refuse the namespace of a module whose evaluation threw', async () => {
    const m = new cordon.Module('export const a = 1; throw new TypeError("no")');
    await assert.rejects(m.evaluate(), { name: 'TypeError' });
    assert.throws(() => m.namespace, { code: 'ERR_VM_MODULE_STATUS' });
  });
});
