// A TypeScript consumer of cordon's public types, checked under --strict in
// CI (test/package.test.js). It is type-checked only, never run.
import {
  Isolate,
  Script,
  Module,
  Context,
  createContext,
  isContext,
  runInContext,
  runInNewContext,
  compileFunction,
  apply,
  applyAsync,
  setCodeCacheKey,
  TimeoutError,
  MemoryLimitError,
  DisposedError,
  liveRecords,
  defaultIsolate,
} from 'cordon';

async function main(): Promise<void> {
  const iso = new Isolate({ memoryLimitMB: 64 });
  const ctx: Context = iso.createContext({ greeting: 'hi' }, { timeout: 100 });
  const other = createContext({}, { isolate: iso, importModuleDynamically: () => 'export default 1' });
  const n: number = runInContext('1 + 1', ctx, { timeout: 50 });
  const s: string = runInNewContext('"a" + "b"', { x: 1 }, { timeout: 50 });
  const later: unknown = await ctx.run('Promise.resolve(3)', { timeout: 100 });
  setCodeCacheKey('a secret of sixteen bytes or more');
  const script = new Script('x = 1', { filename: 'x.js', isolate: iso });
  const cache: Buffer = script.createCachedData();
  script.runInContext(other);
  const fn = compileFunction('return a + b', ['a', 'b'], { parsingContext: ctx, timeout: 100 });
  const sum: number = fn(1, 2);
  const viaApply: unknown = apply(fn, undefined, [1, 2], { timeout: 10 });
  const viaAsync: Promise<unknown> = applyAsync(fn, null, [3, 4]);
  const mod = new Module('export const a = 1', { context: ctx, filename: 'm.mjs' });
  await mod.evaluate({ timeout: 100 });
  const ok: boolean = isContext(ctx) && defaultIsolate instanceof Isolate;
  const live = liveRecords();
  try {
    runInContext('for (;;) {}', ctx, { timeout: 10 });
  } catch (err) {
    if (err instanceof TimeoutError || err instanceof MemoryLimitError || err instanceof DisposedError) {
      const code: string = err.code;
      void code;
    }
  }
  iso.on('unhandledRejection', (reason: unknown, context: Context) => void [reason, context]);
  void [n, s, later, cache, sum, viaApply, viaAsync, ok, live, iso.getHeapStatistics().usedHeapSize];
  ctx.dispose();
  iso.dispose();
}

void main();
