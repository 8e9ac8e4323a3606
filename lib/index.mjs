// index.mjs: the ESM entry. Re-exports the CommonJS API by name, so that
// `import { runInNewContext } from 'cordon'` and `import * as cordon` see
// the same objects as require('cordon').
import { createRequire } from 'node:module';

const cordon = createRequire(import.meta.url)('./index.js');

export const {
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
  AbortError,
  MemoryLimitError,
  DisposedError,
  liveRecords,
} = cordon;

// The default isolate is made on first use in CommonJS (a getter). An ES
// module's bindings cannot be lazy, so importing it by name makes it then.
export const defaultIsolate = cordon.defaultIsolate;

export default cordon;
