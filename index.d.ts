// Type definitions for cordon.
/// <reference types="node" />

import { EventEmitter } from 'node:events';

/** A value that can cross the sandbox boundary (structured clone). */
export type Cloneable = unknown;

export interface IsolateOptions {
  /** Limit of the sandbox heap in MB (8 to 1048576). Default: 128. */
  memoryLimitMB?: number;
  /**
   * Make the isolate even though the host runs with V8 flags that give
   * sandbox code powers cordon cannot take away (--allow-natives-syntax,
   * --expose-gc-as=NAME). Default: false (ERR_CORDON_UNSAFE_HOST_FLAGS).
   */
  allowUnsafeHostFlags?: boolean;
}

export interface HeapStatistics {
  totalHeapSize: number;
  usedHeapSize: number;
  heapSizeLimit: number;
  externalMemory: number;
  /** Bytes of ArrayBuffer backing stores, counted against memoryLimitMB. */
  arrayBufferBytes: number;
  /** Contexts alive in the isolate. */
  contexts: number;
  /** Compiled scripts alive in the isolate. */
  scripts: number;
    /** Host callbacks alive in the isolate. */
  callbacks: number;
  /** Sandbox functions the host holds proxies of. */
  functions: number;
  /** Sandbox promises the host awaits. */
  promises: number;
  /** Host promises the sandbox awaits. */
  resolvers: number;
  /** Foreground tasks (GC, FinalizationRegistry, ...) run so far. */
  tasksRun: number;
}

export interface RunOptions {
  /** Serves import() in this code (default: the context's). */
  importModuleDynamically?: ImportModuleDynamically;
  /** Name of the code in stack traces. Default: 'evalmachine.<anonymous>'. */
  filename?: string;
  /** Added to line numbers in stack traces. Default: 0. */
  lineOffset?: number;
  /** Added to column numbers of the first line in stack traces. Default: 0. */
  columnOffset?: number;
  /**
   * Milliseconds (integer, 1 to 2^32-1) after which the run is terminated
   * and a TimeoutError thrown. The bound covers compiling, running, the
   * microtasks the run queued and copying the result out, and (see
   * untilSettled) what the run spawns until then. Default: none.
   */
  timeout?: number;
  /**
   * Milliseconds of CPU time the sandbox may spend in the run (time in host
   * callbacks not counted); a TimeoutError with clock 'cpu' when exceeded.
   * Default: none.
   */
  cpuTimeout?: number;
  /**
   * true (default): `timeout` also covers the promises the run hands out
   * (they reject with a TimeoutError at its deadline) and the sandbox code
   * that host promises resume (not resumed after it). false: only the run.
   */
  untilSettled?: boolean;
  /**
   * Aborts the run: its promise rejects with an AbortError at once and the
   * run is stopped (or taken off its queue). A sync run only checks it
   * before it starts.
   */
  signal?: AbortSignal;
}

/** The bounds of one run or call. */
export interface Bounds {
  timeout?: number;
  cpuTimeout?: number;
  untilSettled?: boolean;
  signal?: AbortSignal;
}

/**
 * Serves import() (and a module's static imports): return module source, {
 * source, filename } (filename: the module's key in its context and its
 * import.meta.url; default: the specifier), or a cordon.Module of the same
 * context, or a promise of one of them.
 */
export type ImportModuleDynamically = (
  specifier: string,
  referrer: Script | CompiledFunction | Module | SandboxFunction | undefined,
  attributes: Record<string, string>,
) => string | { source: string; filename?: string } | Module | Promise<string | { source: string; filename?: string } | Module>;

export interface CreateContextOptions {
  /** The isolate to create the context in. Default: the default isolate. */
  isolate?: Isolate;
  /**
   * Default bound (ms) for runs in this context that give no timeout, and
   * for calls of sandbox functions that come out of it. Default: none.
   */
  timeout?: number;
  /** The import() callback of code compiled in this context without one. */
  importModuleDynamically?: ImportModuleDynamically;
}

export interface CodeCacheOptions {
  /** A code cache from `produceCachedData` or `createCachedData()`. */
  cachedData?: ArrayBufferView;
  /** Produce a code cache (as `cachedData` on the result). */
  produceCachedData?: boolean;
}

export interface CompileFunctionOptions extends RunOptions, CodeCacheOptions {
  /** The context to compile in. Default: a new context in the default isolate. */
  parsingContext?: Context;
  /** Objects whose properties are in scope of the body (copied in). */
  contextExtensions?: object[];
}

/**
 * A host proxy of a sandbox function: calling it copies the arguments in,
 * runs the sandbox function under its timeout, and copies the result out.
 * `this` is copied in like an argument.
 */
export interface SandboxFunction {
  (...args: any[]): any;
  readonly name: string;
  readonly length: number;
}

export interface CompiledFunction extends SandboxFunction {
  cachedDataProduced?: boolean;
  cachedDataRejected?: boolean;
  cachedData?: Buffer;
}

export interface ScriptOptions extends Omit<RunOptions, 'timeout' | 'cpuTimeout'>, CodeCacheOptions {
  /** The isolate to compile the script in. Default: the default isolate. */
  isolate?: Isolate;
}

/**
 * A V8 isolate of cordon's own: a separate heap with its own limits.
 * Emits 'unhandledRejection' (reason, context) for sandbox promises left
 * rejected with no handler at the end of a run.
 */
export class Isolate extends EventEmitter {
  constructor(options?: IsolateOptions);
  readonly memoryLimitMB: number;
  readonly isDisposed: boolean;
  createContext(contextObject?: object, options?: Omit<CreateContextOptions, 'isolate'>): Context;
  compileScript(code: string, options?: Omit<ScriptOptions, 'isolate'>): Script;
  getHeapStatistics(): HeapStatistics;
  /** Wall-clock nanoseconds spent running (sync, async, tasks). */
  readonly wallTime: bigint;
  /**
   * CPU nanoseconds the sandbox spent, host callbacks left out (sync runs
   * without a cpuTimeout count their wall time).
   */
  readonly cpuTime: bigint;
  /** A full garbage collection of the sandbox heap (diagnostics, tests). */
  gc(): void;
  /**
   * Free the isolate and everything in it. Idempotent. From a host callback
   * during a run, the run is stopped (it throws ERR_ISOLATE_DISPOSED) and the
   * isolate is freed once it has unwound.
   */
  dispose(): void;
}

/** A handle to a context inside an isolate (not the global object itself). */
export class Context {
  private constructor();
  readonly isolate: Isolate;
  readonly isDisposed: boolean;
  /** The context's default timeout, if any. */
  readonly timeout: number | undefined;
  /** Same as runInContext(code, this, options). */
  evaluate(code: string, options?: RunOptions | string): any;
  /**
   * Run code on a runner thread; the host's event loop keeps turning.
   * Resolves with the completion value; rejects as runInContext throws.
   */
  run(code: string, options?: RunOptions | string): Promise<any>;
  /** Free the context. Idempotent. */
  dispose(): void;
}

/** An ES module compiled in a sandbox context. */
export class Module {
  constructor(source: string, options?: {
    filename?: string;
    context?: Context;
    lineOffset?: number;
    columnOffset?: number;
    importModuleDynamically?: ImportModuleDynamically;
  });
  readonly context: Context;
  readonly filename: string;
  /** Load its static imports through the callback, link and evaluate it. */
  evaluate(options?: { timeout?: number; signal?: AbortSignal }): Promise<void>;
  /** A copy of its exports as they are now, once evaluate() has fulfilled (else ERR_VM_MODULE_STATUS). */
  readonly namespace: Record<string, any>;
}

/** Code compiled once, runnable in any context of its isolate. */
export class Script {
  constructor(code: string, options?: ScriptOptions | string);
  readonly isolate: Isolate;
  readonly cachedDataProduced?: boolean;
  readonly cachedDataRejected?: boolean;
  readonly cachedData?: Buffer;
  /** A code cache of the script, for `cachedData` of a later compile. */
  createCachedData(): Buffer;
  runInContext(context: Context, options?: Bounds): any;
  /** runInContext on a runner thread. */
  run(context: Context, options?: Bounds): Promise<any>;
  runInNewContext(contextObject?: object, options?: Bounds): any;
}

/**
 * A new context. The object's own enumerable data properties are copied in
 * as globals (structured clone); its functions become host callbacks.
 */
export function createContext(contextObject?: object, options?: CreateContextOptions): Context;
export function isContext(value: unknown): value is Context;
export function runInContext(code: string, context: Context, options?: RunOptions | string): any;
export function runInNewContext(
  code: string,
  contextObject?: object,
  options?: (RunOptions & CreateContextOptions) | string,
): any;

/**
 * Compile a function body as node:vm's compileFunction does, in a sandbox
 * context; every call of the result is bounded by `options.timeout`.
 */
export function compileFunction(code: string, params?: string[], options?: CompileFunctionOptions): CompiledFunction;

/** Call a sandbox function with a receiver, arguments and a bound of its own. */
export function apply(fn: SandboxFunction, thisArg: unknown, args?: unknown[], options?: Bounds): any;

/** apply() on a runner thread; resolves with what the function returned. */
export function applyAsync(fn: SandboxFunction, thisArg: unknown, args?: unknown[], options?: Bounds): Promise<any>;

/**
 * Key the tags of code caches with a secret of at least 16 bytes, so that
 * caches made in one process verify in every process that sets the same
 * key. Without it the key is random per process. Call it before compiling.
 */
export function setCodeCacheKey(key: string | NodeJS.ArrayBufferView): void;

/** Counts of native records alive in this Node environment. */
export function liveRecords(): {
  isolates: number; contexts: number; scripts: number; callbacks: number; functions: number;
};

/** The isolate the top-level functions use, created on first use. */
export const defaultIsolate: Isolate;

/** A run passed its deadline. code: 'ERR_SCRIPT_EXECUTION_TIMEOUT'. */
export class TimeoutError extends Error {
  readonly code: 'ERR_SCRIPT_EXECUTION_TIMEOUT';
  readonly timeout: number;
  /** Which bound fired: `timeout` ('wall') or `cpuTimeout` ('cpu'). */
  readonly clock: 'wall' | 'cpu';
}

/** The sandbox exceeded its memory limit. code: 'ERR_MEMORY_LIMIT'. */
export class MemoryLimitError extends RangeError {
  readonly code: 'ERR_MEMORY_LIMIT';
  /**
   * True when the sandbox still held more than its limit after a full
   * collection (a global kept what it allocated): the isolate was disposed.
   */
  isolateDisposed: boolean;
}

/** A run was aborted through its `signal`. code: 'ABORT_ERR'; cause: the signal's reason. */
export class AbortError extends Error {
  readonly code: 'ABORT_ERR';
}

/** The isolate or context was disposed. code: 'ERR_ISOLATE_DISPOSED'. */
export class DisposedError extends Error {
  readonly code: 'ERR_ISOLATE_DISPOSED';
}
