'use strict';

const assert = require('node:assert/strict');
const cordon = require('..');

describe('memory limits', () => {
  it('should stop a run that exhausts the heap with ERR_MEMORY_LIMIT, and stay usable', function () {
    this.timeout(60000);
    const iso = new cordon.Isolate({ memoryLimitMB: 32 });
    try {
      const ctx = iso.createContext();
      assert.throws(() => ctx.evaluate('(() => { const a = []; for (;;) a.push(new Array(1e5).fill(0)); })()'),
        (e) => e instanceof cordon.MemoryLimitError && e instanceof RangeError && e.code === 'ERR_MEMORY_LIMIT');
      iso.gc();
      // The limit is restored, and the isolate and context still work.
      assert.equal(ctx.evaluate('[1, 2, 3].reduce((a, b) => a + b)'), 6);
      assert.ok(iso.getHeapStatistics().heapSizeLimit < 64 * 1024 * 1024);
      assert.throws(() => ctx.evaluate('(() => { const a = []; for (;;) a.push(new Array(1e5).fill(0)); })()'),
        { code: 'ERR_MEMORY_LIMIT' });
      assert.equal(ctx.evaluate('"again"'), 'again');
    } finally {
      iso.dispose();
    }
  });

  it('should bound ArrayBuffer backing stores too, and keep the host alive', function () {
    this.timeout(60000);
    const iso = new cordon.Isolate({ memoryLimitMB: 64 });
    try {
      const ctx = iso.createContext();
      const rssBefore = process.memoryUsage().rss;
      assert.throws(() => ctx.evaluate('(() => { const a = []; for (;;) a.push(new ArrayBuffer(1 << 26)) })()'),
        { code: 'ERR_MEMORY_LIMIT' });
      assert.throws(() => ctx.evaluate('new ArrayBuffer(2 ** 31)'), { code: 'ERR_MEMORY_LIMIT' });
      // Catching the RangeError does not let a run go past the limit.
      assert.throws(() => ctx.evaluate('for (;;) { try { new ArrayBuffer(2 ** 30) } catch {} }'),
        { code: 'ERR_MEMORY_LIMIT' });
      assert.ok(process.memoryUsage().rss - rssBefore < 256 * 1024 * 1024);
      // The isolate is usable, with its buffers collected.
      assert.equal(ctx.evaluate('new Uint8Array(1 << 20).length'), 1 << 20);
      iso.gc();
      assert.ok(iso.getHeapStatistics().arrayBufferBytes < 2 * 1024 * 1024);
      // And a new isolate works.
      const other = new cordon.Isolate({ memoryLimitMB: 16 });
      assert.equal(other.createContext().evaluate('new ArrayBuffer(1 << 20).byteLength'), 1 << 20);
      other.dispose();
    } finally {
      iso.dispose();
    }
  });

  it('should keep the live heap under the limit after each of repeated stops (no ratchet)', function () {
    this.timeout(120000);
    const limit = 32 << 20;
    const iso = new cordon.Isolate({ memoryLimitMB: 32 });
    try {
      const ctx = iso.createContext();
      // A third of the limit kept in a global: what a stop leaves that must
      // stay (a packed array of doubles, 12 MB).
      ctx.evaluate('globalThis.kept = []; for (let i = 0; i < 1.5e6; i++) kept.push(1.5)');
      for (let i = 0; i < 6; i++) {
        const bomb = ['(() => { const a = []; for (;;) a.push({ i: a.length }) })()',
          '(() => { let a = [1]; for (;;) a = a.concat(a) })()',
          '(() => { const a = []; for (;;) a.push(new ArrayBuffer(1 << 20)) })()'][i % 3];
        assert.throws(() => ctx.evaluate(bomb), (e) => e.code === 'ERR_MEMORY_LIMIT' && e.isolateDisposed === false);
        const stats = iso.getHeapStatistics();
        assert.ok(stats.usedHeapSize <= limit, `stop ${i}: live heap ${stats.usedHeapSize}`);
        assert.ok(stats.heapSizeLimit < Math.max(limit * 1.25, stats.usedHeapSize + (16 << 20)), `stop ${i}: V8 limit ${stats.heapSizeLimit}`);
        assert.equal(ctx.evaluate('kept.length'), 1.5e6);
      }
    } finally {
      iso.dispose();
    }
  });

  it('should report a memory failure, not a timeout, when both are armed', function () {
    this.timeout(60000);
    const iso = new cordon.Isolate({ memoryLimitMB: 16 });
    try {
      assert.throws(() => iso.createContext().evaluate(
        '(() => { const a = []; for (;;) a.push("x".repeat(1e4) + Math.random()); })()', { timeout: 30000 }),
      { code: 'ERR_MEMORY_LIMIT' });
    } finally {
      iso.dispose();
    }
  });
});
