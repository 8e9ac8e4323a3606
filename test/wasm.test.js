'use strict';

// WebAssembly in a sandbox: memories are held to the memory limit (see
// src/engine/wasm.cc) without changing what sandbox code sees, and async
// compilation delivers its result even when nothing else keeps the host
// process alive.
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const cordon = require('..');
const { innerGrow } = require('./support/bombs.js');

// A module with one page of memory of its own, "hi" at address 0 (a data
// segment), and the memory exported as "mem".
const withData = [
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
  0x05, 0x03, 0x01, 0x00, 0x01,
  0x07, 0x07, 0x01, 0x03, 0x6d, 0x65, 0x6d, 0x02, 0x00,
  0x0b, 0x08, 0x01, 0x00, 0x41, 0x00, 0x0b, 0x02, 0x68, 0x69,
];
// A module that imports its memory as env.mem (at least one page).
const importing = [
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
  0x02, 0x0c, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x03, 0x6d, 0x65, 0x6d, 0x02, 0x00, 0x01,
];
const bytes = (m) => `new Uint8Array([${m}])`;

describe('WebAssembly', () => {
  let iso;
  let ctx;
  beforeEach(() => {
    iso = new cordon.Isolate({ memoryLimitMB: 32 });
    ctx = iso.createContext();
  });
  afterEach(() => iso.dispose());
  const run = (code) => cordon.runInContext(code, ctx);

  it('should keep WebAssembly.Memory a constructor of real memories', () => {
    assert.deepEqual(run(`const m = new WebAssembly.Memory({ initial: 1, maximum: 4 });
      [m instanceof WebAssembly.Memory, Object.getPrototypeOf(m) === WebAssembly.Memory.prototype,
       WebAssembly.Memory.prototype.constructor === WebAssembly.Memory, m.buffer.byteLength, m.grow(2),
       m.buffer.byteLength, WebAssembly.Memory.name, WebAssembly.Memory.length,
       Object.getOwnPropertyDescriptor(WebAssembly, 'Memory').enumerable]`),
    [true, true, true, 65536, 1, 196608, 'Memory', 1, false]);
    assert.throws(() => run('WebAssembly.Memory({ initial: 1 })'), { name: 'TypeError' });
    assert.throws(() => run('new WebAssembly.Memory({ initial: 2, maximum: 1 })'), { name: 'RangeError' });
    assert.throws(() => run('new WebAssembly.Memory(1)'), { name: 'TypeError' });
    assert.throws(() => run('new WebAssembly.Memory({ initial: 1 }).grow(1e9)'), { name: 'RangeError' });
  });

  it("should apply a module's own memory and data, and hide that it is supplied", () => {
    assert.deepEqual(run(`const mod = new WebAssembly.Module(${bytes(withData)});
      const mem = new WebAssembly.Instance(mod).exports.mem;
      [JSON.stringify(WebAssembly.Module.imports(mod)), JSON.stringify(WebAssembly.Module.exports(mod)),
       mem instanceof WebAssembly.Memory, String.fromCharCode(...new Uint8Array(mem.buffer, 0, 2)),
       mem.buffer.byteLength]`),
    ['[]', '[{"name":"mem","kind":"memory"}]', true, 'hi', 65536]);
  });

  it('should link imported memories and keep import errors', () => {
    assert.equal(run(`const m = new WebAssembly.Memory({ initial: 1 });
      new WebAssembly.Instance(new WebAssembly.Module(${bytes(importing)}), { env: { mem: m } }) instanceof WebAssembly.Instance`),
    true);
    assert.throws(() => run(`new WebAssembly.Instance(new WebAssembly.Module(${bytes(importing)}), {})`),
      { name: 'TypeError' });
    assert.throws(() => run(`new WebAssembly.Instance(new WebAssembly.Module(${bytes(importing)}), 1)`),
      { name: 'TypeError' });
    assert.throws(() => run('new WebAssembly.Module(new Uint8Array([1, 2, 3]))'), { name: 'CompileError' });
  });

  it('should clamp a memory with no maximum to the limit, which memory.grow then meets', () => {
    // 32 MB: 512 pages.
    assert.deepEqual(run(`const m = new WebAssembly.Memory({ initial: 1 });
      let r; try { m.grow(600) } catch (e) { r = e.name } [r, m.grow(10), m.buffer.byteLength / 65536]`),
    ['RangeError', 1, 11]);
  });

  it('should compile and instantiate asynchronously', async () => {
    const r = await cordon.runInContext(`(async () => {
      const { module, instance } = await WebAssembly.instantiate(${bytes(withData)});
      const again = await WebAssembly.instantiate(await WebAssembly.compile(${bytes(withData)}));
      const bad = await WebAssembly.compile(new Uint8Array([1])).catch((e) => e.name);
      return [module instanceof WebAssembly.Module, String.fromCharCode(...new Uint8Array(instance.exports.mem.buffer, 0, 2)),
        again instanceof WebAssembly.Instance, bad];
    })()`, ctx);
    assert.deepEqual(r, [true, 'hi', true, 'CompileError']);
  });

  it('should deliver an async compilation to a bare script (nothing else keeps the host alive)', () => {
    const script = `const cordon = require(${JSON.stringify(require.resolve('..'))});
      cordon.runInContext('WebAssembly.instantiate(${bytes(withData)}).then((r) => r.instance.exports.mem.buffer.byteLength)',
        cordon.createContext()).then((v) => console.log('value', v), (e) => console.log('error', e.message));`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'value 65536');
  });

  // V8 12 and 13 count memories as external memory themselves; on V8 14
  // (Node 26) cordon reports them, and they must show all the same.
  it("should count memories in the isolate's external memory, grown from JS and from WebAssembly code", () => {
    const external = () => iso.getHeapStatistics().externalMemory;
    run('globalThis.m = new WebAssembly.Memory({ initial: 4 }); m.grow(4); 0');
    assert.ok(external() >= 8 * 65536, `${external()} bytes for 8 pages`);
    // Grown by memory.grow in WebAssembly code 100 pages at a time, until
    // its clamped maximum (the 32 MB limit, 512 pages) refuses: 500 pages.
    run(`globalThis.i = new WebAssembly.Instance(new WebAssembly.Module(${bytes(innerGrow)})); i.exports.run(); 0`);
    assert.ok(external() >= 508 * 65536, `${external()} bytes for 508 pages`);
  });

  it('should hold at most 8 memories at a time, and free dropped ones for new ones', () => {
    assert.throws(() => run('(() => { const keep = []; for (let i = 0; i < 9; i++) keep.push(new WebAssembly.Memory({ initial: 0 })) })()'),
      { name: 'RangeError', message: /at most 8/ });
    assert.equal(run('for (let i = 0; i < 100; i++) new WebAssembly.Memory({ initial: 1 }); "done"'), 'done');
  });

  // Each value is read and converted once; V8 gets only those primitives.
  it('should build the memory it checked, whatever a descriptor does when read twice', () => {
    assert.deepEqual(run(`let n = 0, k = 0;
      const m = new WebAssembly.Memory({ initial: { valueOf: () => (n++ ? 65536 : 1) },
        maximum: { valueOf: () => (k++ ? 65536 : 1) } });
      [m.buffer.byteLength, n, k, (() => { try { m.grow(1); return 'grew' } catch (e) { return e.name } })()]`),
    [65536, 1, 1, 'RangeError']);
    // Getters on Object.prototype that answer only the second time.
    assert.deepEqual(run(`let i = 0, j = 0;
      Object.defineProperty(Object.prototype, 'initial', { get: () => (i++ ? 65536 : undefined), configurable: true });
      Object.defineProperty(Object.prototype, 'maximum', { get: () => (j++ ? 65536 : undefined), configurable: true });
      let r; try { r = new WebAssembly.Memory({}).buffer.byteLength } catch (e) { r = e.name }
      delete Object.prototype.initial; delete Object.prototype.maximum; r`), 'TypeError');
    assert.throws(() => run('new WebAssembly.Memory({ initial: { valueOf() { throw new SyntaxError("mine") } } })'),
      { name: 'SyntaxError', message: 'mine' });
  });

  // A buffer keeps a memory's pages without the memory object: they are
  // counted until the buffer goes too.
  it('should count the pages of a dropped memory while a buffer of it lives', () => {
    assert.throws(() => run(`(() => {
      const keep = [];
      for (let i = 0; i < 20; i++) {
        const m = new WebAssembly.Memory({ initial: 64, maximum: 64 });
        new Uint8Array(m.buffer).fill(1);
        keep.push(m.buffer);
      }
    })()`), (e) => e.code === 'ERR_MEMORY_LIMIT' || /could not allocate memory/.test(e.message));
    // Dropped with its buffers, the room comes back (no forced GC: a
    // memory that does not fit collects first).
    assert.equal(run('new WebAssembly.Memory({ initial: 64 }).buffer.byteLength'), 64 * 65536);
  });

  it("should keep the maxima of a sandbox's memories within 4x its limit", () => {
    // 32 MB: each memory without a maximum takes 512 pages of the 2048.
    assert.deepEqual(run(`const keep = []; let made = 0, error;
      try { for (let i = 0; i < 8; i++) { keep.push(new WebAssembly.Memory({ initial: 1 })); made++ } }
      catch (e) { error = e.name + ': ' + e.message }
      [made, error]`),
    [4, 'RangeError: WebAssembly.Memory(): could not allocate memory (the maxima of its memories would pass 4x the limit)']);
  });

  // A termination drops the microtasks queued then; an async compilation
  // must not keep the host alive for a reaction that will never run.
  it('should let a bare script exit when a run that started a compilation was stopped', () => {
    const script = `const cordon = require(${JSON.stringify(require.resolve('..'))});
      const ctx = cordon.createContext();
      try { cordon.runInContext('Promise.resolve().then(() => { for (;;) {} }); WebAssembly.compile(${bytes(withData)}); 0',
        ctx, { timeout: 100 }) } catch (e) { console.log(e.code) }`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60000 });
    assert.equal(r.signal, null, 'the script did not exit on its own');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'ERR_SCRIPT_EXECUTION_TIMEOUT');
  });

  it('should cap the async compilations pending at once, and take new ones once they settle', async () => {
    const results = await cordon.runInContext(`const b = ${bytes(withData)};
      Promise.allSettled(Array.from({ length: 70 }, () => WebAssembly.compile(b)))
        .then((all) => all.map((r) => r.status === 'fulfilled' ? 'ok' : r.reason.name))`, ctx);
    assert.equal(results.filter((r) => r === 'ok').length, 64);
    assert.deepEqual([...new Set(results.filter((r) => r !== 'ok'))], ['RangeError']);
    assert.equal(await cordon.runInContext(`WebAssembly.compile(${bytes(withData)}).then(() => 'again')`, ctx), 'again');
  });

  it("should read a descriptor's address type as V8 does (index is not read)", () => {
    assert.equal(run('new WebAssembly.Memory({ index: "i64", initial: 1 }).buffer.byteLength'), 65536);
    assert.equal(run('new WebAssembly.Memory({ index: Symbol(), initial: 1 }).buffer.byteLength'), 65536);
  });

  // V8 keeps a module's bytes and code outside both heaps and reports
  // them nowhere the limit looks: cordon charges each live module twice
  // its bytes. (20 000 one-function bodies: about 60 KB a module.)
  it('should count compiled modules against the limit, sync and async, and free dropped ones', async () => {
    const make = `function leb(n) { const o = []; do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; o.push(b) } while (n); return o }
      function mod(i) {
        const body = [0x00, 0x41, ...leb(i), 0x1a];
        for (let k = 0; k < 20000; k++) body.push(0x41, 0x00, 0x1a);
        body.push(0x0b);
        const code = [0x01, ...leb(body.length), ...body];
        return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00,
          0x03, 0x02, 0x01, 0x00, 0x0a, ...leb(code.length), ...code]);
      }`;
    assert.throws(() => run(`${make} (() => { const keep = []; for (let i = 0; i < 1000; i++) keep.push(new WebAssembly.Module(mod(i))) })()`),
      { code: 'ERR_MEMORY_LIMIT' });
    // Dropped as made: never more than a few live (no forced GC: a module
    // that does not fit collects first).
    assert.equal(run(`${make} for (let i = 0; i < 600; i++) new WebAssembly.Module(mod(i)); 'done'`), 'done');
    const ctx2 = iso.createContext();
    await assert.rejects(cordon.runInContext(`${make} const keep = [];
      (async () => { for (let i = 0; i < 1000; i++) keep.push(await WebAssembly.compile(mod(i))) })()`, ctx2),
    // (A stop inside the task that finished a compilation ends the awaiting
    // sandbox promise unsettled, so the error is that one rather than
    // ERR_MEMORY_LIMIT; what counts here is that the modules stop.)
    (e) => e.code === 'ERR_MEMORY_LIMIT' || /collected without ever settling/.test(e.message));
    assert.ok(iso.isDisposed || iso.getHeapStatistics().externalMemory < 4 * 32 * 1024 * 1024);
  });
});
