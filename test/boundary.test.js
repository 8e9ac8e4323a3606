'use strict';

// What crosses the boundary when it is not a plain value: thrown values of
// every kind, errors' own properties both ways, values V8 cannot copy,
// cordon's placeholders, sandbox promises nobody observes, host flags,
// code caches.
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const cordon = require('..');

const root = path.join(__dirname, '..');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function node(args, script, env = {}) {
  return spawnSync(process.execPath, [...args, '-e', script], {
    encoding: 'utf8', timeout: 30000, env: { ...process.env, ...env },
  });
}

describe('thrown values', () => {
  const ctx = cordon.createContext();
  const thrown = (code) => {
    try {
      cordon.runInContext(code, ctx);
    } catch (error) {
      return error;
    }
    assert.fail(`${code} did not throw`);
  };

  it('should describe a thrown value that cannot be copied, in the message, coded ERR_CANNOT_CLONE', () => {
    const cases = [
      ['throw { f() {} }', /^Uncaught an instance of Object: .*could not be cloned/],
      ['throw function named() {}', /^Uncaught function named: /],
      ['throw () => {}', /^Uncaught function <anonymous>: /],
      ['throw Promise.resolve(1)', /^Uncaught a Promise: /],
      ['throw Symbol("tag")', /^Uncaught Symbol\(tag\): /],
      ['throw new Proxy({}, {})', /^Uncaught a Proxy: /],
      ['const r = Proxy.revocable({}, {}); r.revoke(); throw r.proxy', /^Uncaught a Proxy: /],
      ['throw { get x() { throw new Error("getter") } }', /^Uncaught an instance of Object: copying it out of the sandbox threw$/],
      ['class Custom { m() {} }; throw Object.assign(new Custom(), { f() {} })', /^Uncaught an instance of Custom: /],
      ['throw [new WeakMap()]', /^Uncaught an instance of Array: /],
    ];
    for (const [code, message] of cases) {
      const error = thrown(code);
      assert.ok(error instanceof Error, code);
      assert.equal(error.code, 'ERR_CANNOT_CLONE', code);
      assert.match(error.message, message, code);
    }
  });

  it('should copy thrown data as it is, and run no sandbox code to describe the rest', () => {
    assert.equal(thrown('throw 5'), 5);
    assert.equal(thrown('throw null'), null);
    assert.equal(thrown('throw 2n ** 70n'), 2n ** 70n);
    assert.deepEqual(thrown('throw { a: [1, { b: "c" }] }'), { a: [1, { b: 'c' }] });
    // A Proxy's traps and a toString are never consulted for the message.
    cordon.runInContext('globalThis.calls = 0', ctx);
    thrown('throw new Proxy(function () {}, { get() { calls++ }, getPrototypeOf() { calls++ }, ownKeys() { calls++; return [] } })');
    thrown('throw { toString() { calls++ }, [Symbol.toPrimitive]() { calls++ }, f() {} }');
    assert.equal(cordon.runInContext('calls', ctx), 0);
  });

  it('should carry an error\'s code, cause and other own data properties out, in sync and async runs', async () => {
    const code = 'const e = new RangeError("m", { cause: new Error("why") }); e.code = "E_X"; e.n = 1; e.list = [1, 2]; ' +
      'e.fn = () => {}; Object.defineProperty(e, "lazy", { get() { throw new Error("ran") }, enumerable: true }); ';
    const check = (error) => {
      assert.ok(error instanceof RangeError);
      assert.equal(error.code, 'E_X');
      assert.equal(error.n, 1);
      assert.deepEqual(error.list, [1, 2]);
      assert.equal(error.cause.message, 'why');
      assert.equal(Object.getOwnPropertyDescriptor(error, 'cause').enumerable, false);
      assert.equal('fn' in error, false); // cannot be copied: left out
      assert.equal('lazy' in error, false); // an accessor: never called
    };
    // (Blocks: each run declares its own `e` in the one context.)
    check(thrown(`{ ${code} throw e }`));
    await assert.rejects(ctx.run(`{ ${code} throw e }`), (e) => { check(e); return true; });
    await assert.rejects(cordon.runInContext(`{ ${code} Promise.reject(e) }`, ctx), (e) => { check(e); return true; });
  });

  it('should carry a host error\'s code and own data into the sandbox, never its stack', async () => {
    const hostError = () => Object.assign(new TypeError('host'), { code: 'E_HOST', extra: { a: 1 }, fn() {} });
    const c = cordon.createContext({
      fail: () => { throw hostError(); },
      later: () => Promise.reject(hostError()),
    });
    const seen = 'JSON.stringify([e instanceof TypeError, e.message, e.code, e.extra, typeof e.fn, ' +
      'String(e.stack).includes(' + JSON.stringify(root) + ')])';
    const expected = JSON.stringify([true, 'host', 'E_HOST', { a: 1 }, 'undefined', false]);
    assert.equal(cordon.runInContext(`try { fail() } catch (e) { ${seen} }`, c), expected);
    assert.equal(await cordon.runInContext(`later().catch((e) => ${seen})`, c), expected);
  });
});

describe('values that cannot cross', () => {
  const wasm = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]);

  it('should refuse shared memory and wasm modules out of the sandbox with ERR_CANNOT_CLONE naming them', async () => {
    const ctx = cordon.createContext({ bytes: wasm });
    for (const [code, what] of [
      ['new SharedArrayBuffer(8)', /SharedArrayBuffer/],
      ['({ m: new WebAssembly.Module(bytes) })', /WebAssembly\.Module/],
      ['new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true })', /SharedArrayBuffer|could not be cloned/],
    ]) {
      assert.throws(() => cordon.runInContext(code, ctx), (e) => e.code === 'ERR_CANNOT_CLONE' && what.test(e.message), code);
      await assert.rejects(ctx.run(code), (e) => e.code === 'ERR_CANNOT_CLONE', code);
    }
    assert.equal(cordon.runInContext('"usable"', ctx), 'usable');
  });

  it('should refuse them into the sandbox with ERR_CANNOT_CLONE', () => {
    const ctx = cordon.createContext();
    const f = cordon.runInContext('(x) => typeof x', ctx);
    for (const value of [new SharedArrayBuffer(8), new WebAssembly.Module(wasm), { m: new WebAssembly.Module(wasm), f() {} }]) {
      assert.throws(() => f(value), { code: 'ERR_CANNOT_CLONE' });
    }
    assert.equal(f(1), 'number');
  });

  it('should never hand cordon\'s placeholders to sandbox code, whatever it did to prototypes', () => {
    const ctx = cordon.createContext();
    cordon.runInContext(`
      globalThis.caught = [];
      for (let i = 0; i < 4; i++) {
        Object.defineProperty(Array.prototype, i, { set(v) { caught.push(v) }, configurable: true });
        Object.defineProperty(Object.prototype, 'k' + i, { set(v) { caught.push(v) }, configurable: true });
      }`, ctx);
    const out = cordon.runInContext('[function a() { return 1 }, { k0: () => 2, k1: [() => 3] }]', ctx);
    assert.equal(out[0](), 1);
    assert.equal(out[1].k0(), 2);
    assert.equal(out[1].k1[0](), 3);
    assert.equal(cordon.runInContext('caught.length', ctx), 0);
  });
});

describe('sandbox promises nobody observes', () => {
  it('should not end the host when a host callback ignores a rejected or pending sandbox promise', () => {
    const r = node([], `
      const cordon = require(${JSON.stringify(root)});
      const ctx = cordon.createContext({ log: () => {} });
      cordon.runInContext('log(Promise.reject(new Error("ignored")))', ctx);
      const iso = new cordon.Isolate();
      iso.createContext({ log: () => {} }).evaluate('log(new Promise(() => {})); 1');
      iso.createContext().evaluate('new Promise(() => {})');
      setTimeout(() => iso.dispose(), 20);
      setTimeout(() => console.log('alive'), 100);
    `);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'alive\n');
    assert.doesNotMatch(r.stderr, /Unhandled|ignored/);
  });

  it('should report one unobserved rejection on its isolate, once, and none for an awaited one', async () => {
    const iso = new cordon.Isolate();
    try {
      const reports = [];
      iso.on('unhandledRejection', (reason, context) => reports.push([reason, context]));
      const ctx = iso.createContext({ log: () => {} });
      ctx.evaluate('log(Promise.reject(new Error("ignored")))');
      await assert.rejects(ctx.evaluate('Promise.reject(new Error("awaited"))'), /awaited/);
      const caught = ctx.evaluate('Promise.reject(new Error("caught"))').catch((e) => e.message);
      await sleep(30);
      assert.deepEqual(reports.map(([reason]) => reason.message), ['ignored']);
      assert.equal(reports[0][1], ctx);
      assert.equal(await caught, 'caught');
      const pending = ctx.evaluate('new Promise(() => {})');
      assert.ok(pending instanceof Promise);
      iso.dispose();
      await sleep(30);
      assert.equal(reports.length, 2);
      assert.equal(reports[1][0].code, 'ERR_ISOLATE_DISPOSED');
    } finally {
      iso.dispose();
    }
  });
});

describe('host input past the limits', () => {
  it('should refuse more parameters than V8 takes, with ERR_OUT_OF_RANGE', () => {
    const ctx = cordon.createContext();
    const names = (n) => Array.from({ length: n }, (_, i) => `p${i}`);
    assert.equal(cordon.compileFunction('return p0 + p65533', names(65534), { parsingContext: ctx })(1), NaN);
    for (const n of [65535, 1e6]) {
      assert.throws(() => cordon.compileFunction('return 1', names(n), { parsingContext: ctx }),
        { code: 'ERR_OUT_OF_RANGE', name: 'RangeError' });
    }
    const sparse = [];
    sparse.length = 2 ** 32 - 1;
    assert.throws(() => cordon.compileFunction('', sparse), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('should keep NUL characters in import.meta.url and function names', async () => {
    const ctx = cordon.createContext({ out: (u) => { ctx.url = u; } });
    await new cordon.Module('out(import.meta.url)', { context: ctx, filename: 'a\u0000b.mjs' }).evaluate();
    assert.equal(ctx.url, 'a\u0000b.mjs');
    assert.equal(cordon.runInContext('({ ["x\\u0000y"]() {} })["x\\u0000y"]', ctx).name, 'x\u0000y');
  });
});

describe('code caches', () => {
  const src = `globalThis.v = ${'[1, 2, 3].map((x) => x * 2).length + '.repeat(200)}0`;

  it('should reject a cache with any byte changed, a forged tag, or another source of the same length', () => {
    const ctx = cordon.createContext();
    const cache = new cordon.Script(src).createCachedData();
    assert.equal(new cordon.Script(src, { cachedData: cache }).cachedDataRejected, false);
    const step = Math.max(1, Math.floor(cache.length / 400));
    for (let i = 0; i < cache.length; i += step) {
      const bad = Buffer.from(cache);
      bad[i] ^= 0x41;
      const script = new cordon.Script(src, { cachedData: bad });
      assert.equal(script.cachedDataRejected, true, `byte ${i}`);
      script.runInContext(ctx);
    }
    const other = src.replace('x * 2', 'x * 3');
    assert.equal(other.length, src.length);
    const script = new cordon.Script(other, { cachedData: cache });
    assert.equal(script.cachedDataRejected, true);
    assert.equal(script.runInContext(ctx), 600);
    const fn = cordon.compileFunction('return a', ['a'], { parsingContext: ctx, produceCachedData: true });
    assert.equal(cordon.compileFunction('return a', ['b'], { parsingContext: ctx, cachedData: fn.cachedData }).cachedDataRejected, true);
    assert.equal(cordon.compileFunction('return a', ['a'], { parsingContext: ctx, cachedData: fn.cachedData }).cachedDataRejected, false);
  });

  it('should accept a cache from another process only when both set the same key', () => {
    const make = (key) => node([], `
      const cordon = require(${JSON.stringify(root)});
      ${key ? `cordon.setCodeCacheKey(${JSON.stringify(key)});` : ''}
      process.stdout.write(new cordon.Script(${JSON.stringify(src)}).createCachedData().toString('base64'));
    `);
    const use = (key, cache) => node([], `
      const cordon = require(${JSON.stringify(root)});
      ${key ? `cordon.setCodeCacheKey(${JSON.stringify(key)});` : ''}
      const s = new cordon.Script(${JSON.stringify(src)}, { cachedData: Buffer.from(${JSON.stringify(cache)}, 'base64') });
      process.stdout.write(String(s.cachedDataRejected));
    `);
    const key = 'a shared secret of the application';
    const keyed = make(key);
    assert.equal(keyed.status, 0, keyed.stderr);
    assert.equal(use(key, keyed.stdout).stdout, 'false');
    assert.equal(use('another secret of sixteen bytes', keyed.stdout).stdout, 'true');
    assert.equal(use(undefined, keyed.stdout).stdout, 'true');
    assert.equal(use(undefined, make(undefined).stdout).stdout, 'true'); // per process by default
  });

  it('should validate the key', () => {
    assert.throws(() => cordon.setCodeCacheKey(5), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => cordon.setCodeCacheKey('short'), { code: 'ERR_INVALID_ARG_VALUE' });
    assert.throws(() => cordon.setCodeCacheKey(new Uint8Array(15)), { code: 'ERR_INVALID_ARG_VALUE' });
  });
});

describe('host V8 flags', () => {
  const probe = `
    const cordon = require(${JSON.stringify(root)});
    const out = [];
    try {
      out.push(cordon.runInNewContext('[typeof gc, typeof triggerAssertFalse, typeof externalizeString, typeof getV8Statistics].join()'));
    } catch (e) { out.push(e.code); }
    try {
      const iso = new cordon.Isolate({ allowUnsafeHostFlags: true });
      out.push(iso.createContext().evaluate('typeof gc'));
      iso.dispose();
    } catch (e) { out.push(e.code); }
    out.push(typeof gc);
    console.log(out.join(' '));
  `;

  it('should take the globals of extension flags out of every sandbox context, and leave the host\'s', () => {
    const r = node(['--expose-gc', '--expose-trigger-failure', '--expose-externalize-string', '--expose-statistics'], probe);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'undefined,undefined,undefined,undefined undefined function\n');
    const restore = node(['--expose-gc'], `
      const cordon = require(${JSON.stringify(root)});
      console.log(cordon.runInNewContext('try { globalThis.gc = () => 1 } catch {} typeof gc'));
    `);
    assert.equal(restore.stdout, 'undefined\n');
  });

  it('should refuse isolates under --allow-natives-syntax (flag or setFlagsFromString) unless asked', () => {
    for (const [args, pre] of [[['--allow-natives-syntax'], ''], [[], "require('v8').setFlagsFromString('--allow-natives-syntax');"]]) {
      const r = node(args, pre + probe);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, 'ERR_CORDON_UNSAFE_HOST_FLAGS undefined undefined\n', args.join(' '));
    }
    const escape = node(['--allow-natives-syntax'], `
      const cordon = require(${JSON.stringify(root)});
      const iso = new cordon.Isolate({ allowUnsafeHostFlags: true });
      console.log(iso.createContext().evaluate('typeof %IsSmi(1)'));
    `);
    assert.equal(escape.stdout, 'boolean\n'); // the opt-in is real
  });

  it('should refuse isolates under flags that install globals under names of the host\'s choosing', () => {
    const r = node(['--expose-gc-as=collect'], probe);
    assert.equal(r.stdout, 'ERR_CORDON_UNSAFE_HOST_FLAGS undefined undefined\n');
    const underscore = node(['--expose_gc_as=collect'], probe);
    assert.equal(underscore.stdout, 'ERR_CORDON_UNSAFE_HOST_FLAGS undefined undefined\n');
  });
});

describe('import callbacks that keep their referrer', () => {
  it('should free the context once it is disposed (the cycle through both heaps is cut there)', async function () {
    if (typeof global.gc !== 'function') this.skip(); // the forced-GC check; see below for the other
    const base = cordon.liveRecords();
    for (let i = 0; i < 50; i++) {
      const ctx = cordon.createContext();
      let saved;
      const fn = cordon.compileFunction('return import("m")', [], {
        parsingContext: ctx,
        importModuleDynamically(specifier, referrer) {
          saved = referrer;
          return 'export default 1';
        },
      });
      assert.equal((await fn()).default, 1);
      assert.equal(saved, fn);
      ctx.dispose();
    }
    for (let i = 0; i < 10 && cordon.liveRecords().contexts - base.contexts > 2; i++) {
      global.gc();
      await sleep(10);
    }
    assert.ok(cordon.liveRecords().contexts - base.contexts <= 2, JSON.stringify(cordon.liveRecords()));
  });

  it('should keep the records of disposed contexts bounded without a forced GC', () => {
    const r = spawnSync(process.execPath, ['-e', `
      const cordon = require(${JSON.stringify(root)});
      (async () => {
        let max = 0;
        for (let i = 0; i < 3000; i++) {
          const ctx = cordon.createContext();
          let saved;
          const fn = cordon.compileFunction('return import("m")', [], { parsingContext: ctx,
            importModuleDynamically(s, referrer) { saved = [referrer, new Array(1e4).fill(i)]; return 'export default 1'; } });
          await fn();
          ctx.dispose();
          max = Math.max(max, cordon.liveRecords().contexts);
        }
        console.log(max);
      })();
    `], { encoding: 'utf8', timeout: 120000 });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(Number(r.stdout) < 1500, `at most ${r.stdout} contexts alive of 3000`);
  });
});
