'use strict';

// cordon's public API: node:vm's shape over V8 isolates of cordon's own.
// This layer validates every argument once, fills defaults, and turns the
// native layer's statuses into coded errors; src/ trusts what it is given.

const { EventEmitter } = require('node:events');
const binding = require('./binding');
const errors = require('./errors');
const marshal = require('./marshal');
const {
  validateString,
  validateObject,
  validateInt32,
  validateTimeout,
  validateMemoryLimit,
  validateParams,
  validateCachedData,
  validateBoolean,
  getOption,
} = require('./validate');

const { TimeoutError, MemoryLimitError, DisposedError, withCode } = errors;

const DEFAULT_FILENAME = 'evalmachine.<anonymous>';
const DEFAULT_MEMORY_LIMIT_MB = 128;
const MAX_DEPTH = 32; // src/cordon.h, CDN_MAX_DEPTH
// Bound on the sandbox's reaction to a host promise settling, when its
// context has no timeout of its own.
const SETTLE_TIMEOUT = 1000;

// Native statuses (src/engine/engine.h, src/cordon.h).
const EEXCEPTION = -1;
const ETERMINATED = -2;
const ECLONE = -3;
const ENOMEM = -4;
const EDISPOSED = -6;
const KDISPOSED = -100;
const KTIMEOUT = -101;
const KDEPTH = -102;

const STANDARD_ERRORS = {
  Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError,
};

// What the running call is bounded by, for the TimeoutError's message, and
// which context it runs in, for the memory limit's and for proxies of
// functions in a thrown value.
let activeTimeout = 0;
let activeContext = null;

// Called by the native layer to build the error a failed call throws.
function makeError(kind, name, message, stack, value, code) {
  switch (kind) {
    case EEXCEPTION: {
      if (name === undefined) {
        // A thrown value that is not an Error crosses as a value.
        return activeContext ? decodeIn(activeContext, value) : marshal.decode(value, null);
      }
      const Ctor = Object.hasOwn(STANDARD_ERRORS, name) ? STANDARD_ERRORS[name] : Error;
      const error = new Ctor(message);
      if (error.name !== name) {
        Object.defineProperty(error, 'name', {
          value: name, writable: true, configurable: true, enumerable: false,
        });
      }
      Object.defineProperty(error, 'stack', {
        value: stack || `${name}: ${message}`, writable: true, configurable: true, enumerable: false,
      });
      if (code !== undefined) error.code = code;
      return error;
    }
    case ETERMINATED:
    case KTIMEOUT:
      return new TimeoutError(activeTimeout);
    case ECLONE:
      return withCode(new TypeError(message || 'A value could not be copied across the sandbox boundary'),
        'ERR_CANNOT_CLONE');
    case ENOMEM:
      return new MemoryLimitError(activeContext ? activeContext.isolate.memoryLimitMB : 0);
    case EDISPOSED:
      return new DisposedError('context');
    case KDISPOSED:
      return new DisposedError();
    case KDEPTH:
      return withCode(new RangeError(
        `Host callbacks re-entered the sandbox more than ${MAX_DEPTH} levels deep`), 'ERR_REENTRANCY_LIMIT');
    default:
      return withCode(new Error(`cordon internal error (${kind}): ${message || ''}`),
        'ERR_CORDON_INTERNAL');
  }
}

// The host promise for a sandbox promise; the native layer settles it from
// the host loop (state 1 fulfilled, 2 rejected, 3 the isolate went away).
function makeDeferred() {
  const context = activeContext;
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return {
    promise,
    settle(state, value, name, message, stack, code) {
      if (state === 1) {
        resolve(decodeIn(context, value));
      } else if (state === 2) {
        reject(name !== undefined ? makeError(EEXCEPTION, name, message, stack, undefined, code)
          : decodeIn(context, value));
      } else {
        reject(new DisposedError());
      }
    },
  };
}

// The sandbox awaits host promise `promise`: settle its side (the resolver
// `handle`) when it settles, and run the sandbox's microtasks then, bounded
// by the context's timeout or SETTLE_TIMEOUT.
function adopt(promise, handle) {
  const context = activeContext;
  const settle = (rejected, value) => {
    if (context === null || context.isDisposed) return;
    const timeout = contextTimeout(context) || SETTLE_TIMEOUT;
    let encoded;
    try {
      encoded = encodeIn(context, value);
    } catch (error) {
      rejected = true;
      encoded = encodeIn(context, new TypeError(`The settled value cannot be copied into the sandbox: ${error.message}`));
    }
    try {
      bounded(context, timeout, () => binding.settleSandbox(handle, rejected, encoded, timeout));
    } catch {
      // A timeout or a disposal while the sandbox reacted: nothing awaits it
      // on the host side.
    }
  };
  Promise.prototype.then.call(promise, (v) => settle(false, v), (e) => settle(true, e));
}

// A sandbox promise was left rejected with no handler at the end of a run:
// the isolate emits 'unhandledRejection' (reason, context); without a
// listener the report is dropped. It never throws into the host.
function rejectionHook(context, value, name, message, stack, code) {
  if (context === undefined) return;
  const isolate = context.isolate;
  if (isolate.listenerCount('unhandledRejection') === 0) return;
  const reason = name !== undefined
    ? makeError(EEXCEPTION, name, message, stack, undefined, code)
    : decodeIn(context, value);
  isolate.emit('unhandledRejection', reason, context);
}

binding.setup(makeError, makeDeferred, adopt, importHook, rejectionHook);

// ---- values and functions across the boundary -------------------------------

function errorTuple(error) {
  try {
    if (error !== null && (typeof error === 'object' || typeof error === 'function')) {
      const { code } = error;
      return [1, String(error.name ?? 'Error'), String(error.message ?? ''), typeof code === 'string' ? code : undefined];
    }
    return [1, 'Error', String(error), undefined];
  } catch {
    return [1, 'Error', 'a host callback threw a value that could not be read', undefined];
  }
}

// The sandbox called host function `fn`: decode the arguments, call, and
// answer the native layer with a primitive, [0, encoded] or [1, name,
// message].
function invokeHost(fn, context, encodedArgs) {
  let result;
  try {
    result = Reflect.apply(fn, undefined, decodeIn(context, encodedArgs));
  } catch (error) {
    return errorTuple(error);
  }
  try {
    const encoded = encodeIn(context, result);
    return Array.isArray(encoded) ? [0, encoded] : encoded;
  } catch (error) {
    return [1, 'TypeError',
      `The result of host function ${fn.name || '<anonymous>'} cannot be copied into the sandbox: ${error.message}`,
      'ERR_CANNOT_CLONE'];
  }
}

// The wrapper holds its context weakly: it lives in the sandbox heap's
// reach (through the sandbox function that calls it), and a strong edge
// back to the host Context would close a cycle through both heaps that
// neither collector can see.
function encodeIn(context, value) {
  const ref = context === null ? null : new WeakRef(context);
  return marshal.encode(value, (fn) => (args) => invokeHost(fn, ref?.deref() ?? null, args));
}

function decodeIn(context, result) {
  return marshal.decode(result, (handle, name, length) => makeProxy(handle, name, length, context, undefined));
}

// Host proxies of sandbox functions, and what each one calls.
const proxyTargets = new WeakMap();

function makeProxy(handle, name, length, context, timeout, target = {}) {
  target.handle = handle;
  target.context = context;
  target.timeout = timeout;
  const proxy = {
    // A method: callable with any `this`, and not a constructor.
    [name](...args) {
      return callTarget(target, this, args, target.timeout ?? (context ? contextTimeout(context) : 0));
    },
  }[name];
  Object.defineProperty(proxy, 'length', { value: length, configurable: true });
  proxyTargets.set(proxy, target);
  target.proxy = proxy; // for import(): the native side holds `target` weakly
  return proxy;
}

function callTarget(target, thisArg, args, timeout) {
  const { context } = target;
  if (context === null) throw new DisposedError('context');
  if (context.isDisposed) throw new DisposedError(context.isolate.isDisposed ? 'isolate' : 'context');
  const { handle } = target;
  const n = args.length;
  const recv = encodeArg(context, thisArg, -1);
  // The hot path of every call: no closure, no spread for a few arguments.
  const prevTimeout = activeTimeout;
  const prevContext = activeContext;
  activeTimeout = timeout;
  activeContext = context;
  let result;
  try {
    switch (n) {
      case 0: result = binding.call(handle, timeout, recv); break;
      case 1: result = binding.call(handle, timeout, recv, encodeArg(context, args[0], 0)); break;
      case 2:
        result = binding.call(handle, timeout, recv, encodeArg(context, args[0], 0), encodeArg(context, args[1], 1));
        break;
      default: {
        const encoded = new Array(n);
        for (let i = 0; i < n; i++) encoded[i] = encodeArg(context, args[i], i);
        result = binding.call(handle, timeout, recv, ...encoded);
      }
    }
  } finally {
    activeTimeout = prevTimeout;
    activeContext = prevContext;
  }
  return typeof result === 'object' && result !== null ? decodeIn(context, result) : result;
}

// An argument (index -1: thisArg) for the native layer.
function encodeArg(context, value, index) {
  const type = typeof value;
  if (type === 'number' || type === 'string' || type === 'boolean' || value === undefined || value === null) {
    return value;
  }
  try {
    return encodeIn(context, value);
  } catch (error) {
    const name = typeof index === 'string' ? index : index < 0 ? 'thisArg' : `args[${index}]`;
    throw withCode(new TypeError(`The "${name}" argument cannot be copied into the sandbox: ${error.message}`),
      'ERR_CANNOT_CLONE');
  }
}

// Every call into a sandbox goes through here, so that errors built by
// makeError know the call's bound and context.
function bounded(context, timeout, fn) {
  const result = boundedRaw(context, fn, timeout);
  return typeof result === 'object' && result !== null ? decodeIn(context, result) : result;
}

// The same for native calls that return handles rather than values.
function boundedRaw(context, fn, timeout = activeTimeout) {
  const prevTimeout = activeTimeout;
  const prevContext = activeContext;
  activeTimeout = timeout;
  activeContext = context;
  try {
    return fn();
  } finally {
    activeTimeout = prevTimeout;
    activeContext = prevContext;
  }
}

// ---- isolates ---------------------------------------------------------------

// Private to this module: the native handle behind each public object.
let isolateHandle;
let contextHandle;
let contextTimeout;
let contextImport;
let contextModules;
const kConstruct = Symbol('cordon.construct');

class Isolate extends EventEmitter {
  #handle;
  #disposed = false;
  #memoryLimitMB;

  static {
    isolateHandle = (isolate) => {
      if (isolate.#disposed) throw new DisposedError();
      return isolate.#handle;
    };
  }

  /**
   * @param {{ memoryLimitMB?: number }} [options]
   */
  constructor(options = {}) {
    super();
    validateObject(options, 'options');
    let limit = getOption(options, 'memoryLimitMB', 'options.memoryLimitMB');
    limit = limit === undefined
      ? DEFAULT_MEMORY_LIMIT_MB
      : validateMemoryLimit(limit, 'options.memoryLimitMB');
    this.#memoryLimitMB = limit;
    this.#handle = binding.isolateNew(limit);
  }

  get memoryLimitMB() {
    return this.#memoryLimitMB;
  }

  get isDisposed() {
    return this.#disposed;
  }

  createContext(contextObject, options) {
    return createContext(contextObject, { ...optionsObject(options, 'options'), isolate: this });
  }

  compileScript(code, options) {
    return new Script(code, { ...optionsObject(options, 'options'), isolate: this });
  }

  getHeapStatistics() {
    return binding.isolateStats(isolateHandle(this));
  }

  /** A full garbage collection of the sandbox heap (diagnostics, tests). */
  gc() {
    binding.isolateGc(isolateHandle(this));
  }

  /**
   * Free the isolate and everything in it. Idempotent. Called from a host
   * callback during a run, it stops the run, which then throws
   * ERR_ISOLATE_DISPOSED, and frees the isolate once the run has unwound.
   */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    if (defaultIsolate === this) defaultIsolate = null;
    binding.isolateDispose(this.#handle);
  }
}

let defaultIsolate = null;

function getDefaultIsolate() {
  if (defaultIsolate === null) defaultIsolate = new Isolate();
  return defaultIsolate;
}

function isolateOption(opts) {
  const isolate = getOption(opts, 'isolate', 'options.isolate');
  if (isolate === undefined) return getDefaultIsolate();
  if (!(isolate instanceof Isolate)) throw errors.invalidArgType('options.isolate', 'an instance of cordon.Isolate', isolate);
  return isolate;
}

// ---- contexts ---------------------------------------------------------------

class Context {
  #handle;
  #isolate;
  #timeout;
  #importCallback;
  #modules = new Map(); // module map of import(): resolved key -> Module
  #disposed = false;

  static {
    contextHandle = (context) => {
      if (context.#disposed) throw new DisposedError('context');
      if (context.#isolate.isDisposed) throw new DisposedError();
      return context.#handle;
    };
    contextTimeout = (context) => context.#timeout;
    contextImport = (context) => context.#importCallback;
    contextModules = (context) => context.#modules;
  }

  static isContext(value) {
    return typeof value === 'object' && value !== null && #handle in value;
  }

  constructor(token, isolate, timeout, contextObject, importCallback) {
    if (token !== kConstruct) {
      throw withCode(new TypeError('Illegal constructor: use cordon.createContext()'),
        'ERR_ILLEGAL_CONSTRUCTOR');
    }
    this.#isolate = isolate;
    this.#timeout = timeout;
    this.#importCallback = importCallback;
    const globals = encodeGlobals(this, contextObject);
    this.#handle = boundedRaw(this, () => binding.contextNew(isolateHandle(isolate), globals, this));
  }

  get isolate() {
    return this.#isolate;
  }

  /** The default timeout of calls of sandbox functions from this context. */
  get timeout() {
    return this.#timeout || undefined;
  }

  get isDisposed() {
    return this.#disposed || this.#isolate.isDisposed;
  }

  /** Run code in this context: runInContext(code, this, options). */
  evaluate(code, options) {
    return runInContext(code, this, options);
  }

  /** Free the context. Idempotent. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    binding.contextDispose(this.#handle);
  }
}

function optionsObject(options, name) {
  if (options === undefined) return {};
  validateObject(options, name);
  return options;
}

// The context object's own enumerable data properties, encoded: data is
// copied (structured clone), functions become host callbacks.
function encodeGlobals(context, contextObject) {
  let descriptors;
  try {
    descriptors = Object.getOwnPropertyDescriptors(contextObject);
  } catch (error) {
    throw errors.invalidArgValue('contextObject', `could not be read (${error?.message ?? error})`, contextObject);
  }
  const data = {};
  let empty = true;
  for (const key of Object.keys(descriptors)) {
    const desc = descriptors[key];
    if (!desc.enumerable || !('value' in desc)) continue;
    data[key] = desc.value;
    empty = false;
  }
  if (empty) return undefined;
  try {
    return encodeIn(context, data);
  } catch (error) {
    throw withCode(new TypeError(`The "contextObject" argument holds a value that cannot be copied into the sandbox: ${error.message}`),
      'ERR_INVALID_ARG_VALUE');
  }
}

/**
 * A new context. `contextObject`'s own enumerable data properties become
 * globals (copied); its functions become host callbacks.
 */
function createContext(contextObject, options) {
  if (contextObject === undefined) contextObject = {};
  else validateObject(contextObject, 'contextObject');
  const opts = optionsObject(options, 'options');
  const isolate = isolateOption(opts);
  const timeout = validateTimeout(getOption(opts, 'timeout', 'options.timeout'), 'options.timeout');
  const importCallback = importOption(opts);
  if (isolate.isDisposed) throw new DisposedError();
  return new Context(kConstruct, isolate, timeout, contextObject, importCallback);
}

// options.importModuleDynamically: a function, or undefined.
function importOption(opts) {
  const cb = getOption(opts, 'importModuleDynamically', 'options.importModuleDynamically');
  if (cb !== undefined && typeof cb !== 'function') {
    throw errors.invalidArgType('options.importModuleDynamically', 'a function', cb);
  }
  return cb;
}

function isContext(value) {
  return Context.isContext(value);
}

function validateContext(context, name) {
  if (!isContext(context)) throw errors.invalidArgType(name, 'a cordon context (from cordon.createContext())', context);
}

// ---- runs -------------------------------------------------------------------

// Options shared by runInContext, Script and compileFunction: a filename
// string or an options object.
function sourceOptions(options, name) {
  if (typeof options === 'string') {
    return { opts: { filename: options }, filename: options, lineOffset: 0, columnOffset: 0, timeout: 0 };
  }
  const opts = optionsObject(options, name);
  let filename = getOption(opts, 'filename', `${name}.filename`);
  if (filename === undefined) filename = DEFAULT_FILENAME;
  else validateString(filename, `${name}.filename`);
  let lineOffset = getOption(opts, 'lineOffset', `${name}.lineOffset`);
  if (lineOffset === undefined) lineOffset = 0;
  else validateInt32(lineOffset, `${name}.lineOffset`);
  let columnOffset = getOption(opts, 'columnOffset', `${name}.columnOffset`);
  if (columnOffset === undefined) columnOffset = 0;
  else validateInt32(columnOffset, `${name}.columnOffset`);
  const timeout = validateTimeout(getOption(opts, 'timeout', `${name}.timeout`), `${name}.timeout`);
  return { opts, filename, lineOffset, columnOffset, timeout };
}

function runTimeout(options, context) {
  if (options === undefined) return contextTimeout(context);
  const opts = optionsObject(options, 'options');
  return validateTimeout(getOption(opts, 'timeout', 'options.timeout'), 'options.timeout') ||
    contextTimeout(context);
}

function runInContext(code, context, options) {
  validateString(code, 'code');
  validateContext(context, 'contextifiedObject');
  const o = sourceOptions(options, 'options');
  const handle = contextHandle(context);
  const timeout = o.timeout || contextTimeout(context);
  const importCallback = (typeof options === 'object' ? importOption(o.opts) : undefined) ??
    contextImport(context);
  return bounded(context, timeout,
    () => binding.run(handle, code, o.filename, o.lineOffset, o.columnOffset, timeout, importCallback));
}

function runInNewContext(code, contextObject, options) {
  validateString(code, 'code');
  const { opts } = sourceOptions(options, 'options'); // validate before creating anything
  const context = createContext(contextObject, {
    isolate: getOption(opts, 'isolate', 'options.isolate'),
    importModuleDynamically: importOption(opts),
  });
  try {
    return runInContext(code, context, opts);
  } finally {
    context.dispose();
  }
}

// ---- scripts ----------------------------------------------------------------

function cacheOptions(opts, name) {
  const cachedData = getOption(opts, 'cachedData', `${name}.cachedData`);
  if (cachedData !== undefined) validateCachedData(cachedData, `${name}.cachedData`);
  const produce = getOption(opts, 'produceCachedData', `${name}.produceCachedData`);
  if (produce !== undefined) validateBoolean(produce, `${name}.produceCachedData`);
  const view = cachedData === undefined ? undefined
    : new Uint8Array(cachedData.buffer, cachedData.byteOffset, cachedData.byteLength);
  return { cachedData: view, produceCachedData: produce === true };
}

// node:vm's cachedData properties on a Script or compiled function.
function setCacheResult(target, cache, rejected, produced) {
  if (cache.cachedData !== undefined) target.cachedDataRejected = rejected === 1;
  if (cache.produceCachedData) {
    target.cachedDataProduced = produced !== undefined;
    if (produced !== undefined) target.cachedData = produced;
  }
}

class Script {
  #handle;
  #isolate;

  /**
   * Compile `code` once; run it in any context of its isolate.
   * @param {string} code
   * @param {object|string} [options] filename, lineOffset, columnOffset,
   *   cachedData, produceCachedData, isolate
   */
  constructor(code, options) {
    if (code === kConstruct) {
      // A new handle to a script the sandbox still runs (import()'s
      // referrer, when the host dropped its own).
      this.#handle = options.handle;
      this.#isolate = options.isolate;
      return;
    }
    validateString(code, 'code');
    const o = sourceOptions(options, 'options');
    const cache = cacheOptions(o.opts, 'options');
    const isolate = isolateOption(o.opts);
    const importCallback = importOption(o.opts);
    this.#isolate = isolate;
    const [handle, rejected, produced] = boundedRaw(null, () => binding.scriptNew(isolateHandle(isolate), code,
      o.filename, o.lineOffset, o.columnOffset, cache.cachedData, cache.produceCachedData, importCallback, this));
    this.#handle = handle;
    setCacheResult(this, cache, rejected, produced);
  }

  get isolate() {
    return this.#isolate;
  }

  /** A V8 code cache of the script, for `cachedData` of a later compile. */
  createCachedData() {
    isolateHandle(this.#isolate);
    return binding.scriptCache(this.#handle);
  }

  runInContext(context, options) {
    validateContext(context, 'contextifiedObject');
    if (context.isolate !== this.#isolate) {
      throw errors.invalidArgValue('contextifiedObject', 'must be a context of the isolate the script was compiled in', context);
    }
    const timeout = runTimeout(options, context);
    const handle = contextHandle(context);
    return bounded(context, timeout, () => binding.scriptRun(this.#handle, handle, timeout));
  }

  runInNewContext(contextObject, options) {
    const context = createContext(contextObject, { isolate: this.#isolate });
    try {
      return this.runInContext(context, options);
    } finally {
      context.dispose();
    }
  }
}

// ---- compiled functions -------------------------------------------------------

/**
 * Compile a function body, as node:vm's compileFunction does, in a sandbox
 * context. Every call of the result is bounded by `options.timeout`.
 */
function compileFunction(code, params, options) {
  validateString(code, 'code');
  params = validateParams(params === undefined ? [] : params, 'params');
  const o = sourceOptions(options, 'options');
  const cache = cacheOptions(o.opts, 'options');
  let context = getOption(o.opts, 'parsingContext', 'options.parsingContext');
  if (context === undefined) context = createContext();
  else validateContext(context, 'options.parsingContext');
  let extensions = getOption(o.opts, 'contextExtensions', 'options.contextExtensions');
  if (extensions !== undefined) {
    if (!Array.isArray(extensions)) throw errors.invalidArgType('options.contextExtensions', 'an array of objects', extensions);
    extensions.forEach((e, i) => validateObject(e, `options.contextExtensions[${i}]`));
    extensions = encodeArg(context, extensions, 'options.contextExtensions');
  }
  const handle = contextHandle(context);
  const importCallback = importOption(o.opts) ?? contextImport(context);
  const target = {}; // held weakly by the native side, for import()'s referrer
  const [encoded, rejected, produced] = boundedRaw(context, () => binding.compileFunction(handle, code,
    o.filename, o.lineOffset, o.columnOffset, params, extensions, cache.cachedData, cache.produceCachedData,
    importCallback, target));
  const [, [fnHandle], [name], [length]] = encoded;
  const fn = makeProxy(fnHandle, name, length, context, o.timeout || undefined, target);
  setCacheResult(fn, cache, rejected, produced);
  return fn;
}

/**
 * Call a sandbox function with `thisArg` and `args`, bounded by
 * `options.timeout` instead of the function's default.
 */
function apply(fn, thisArg, args, options) {
  const target = typeof fn === 'function' ? proxyTargets.get(fn) : undefined;
  if (target === undefined) throw errors.invalidArgType('fn', 'a function from a cordon sandbox', fn);
  if (args === undefined) args = [];
  else if (!Array.isArray(args)) throw errors.invalidArgType('args', 'an array', args);
  const opts = optionsObject(options, 'options');
  const timeout = validateTimeout(getOption(opts, 'timeout', 'options.timeout'), 'options.timeout') ||
    target.timeout || contextTimeout(target.context);
  return callTarget(target, thisArg, args, timeout);
}

// ---- modules and import() ----------------------------------------------------

let moduleHandle;
let moduleImport;
const DEFAULT_MODULE_FILENAME = 'module.mjs';

/**
 * An ES module compiled in a sandbox context. Its static imports, and
 * import() in its code, go through its importModuleDynamically callback
 * (or its context's), with the module as the referrer.
 */
class Module {
  #handle;
  #context;
  #importCallback;
  #filename;
  #linked = null; // the promise of linking its graph, once started

  static {
    moduleHandle = (module) => module.#handle;
    moduleImport = (module) => module.#importCallback ?? contextImport(module.#context);
  }

  /**
   * @param {string} source
   * @param {{ filename?: string, context?: Context, lineOffset?: number,
   *   columnOffset?: number, importModuleDynamically?: Function }} [options]
   */
  constructor(source, options) {
    validateString(source, 'source');
    const opts = optionsObject(options, 'options');
    let filename = getOption(opts, 'filename', 'options.filename');
    if (filename === undefined) filename = DEFAULT_MODULE_FILENAME;
    const o = sourceOptions({ ...opts, filename }, 'options');
    let context = getOption(opts, 'context', 'options.context');
    if (context === undefined) context = createContext();
    else validateContext(context, 'options.context');
    this.#context = context;
    this.#filename = o.filename;
    this.#importCallback = importOption(opts);
    const handle = contextHandle(context);
    this.#handle = boundedRaw(context, () => binding.moduleNew(handle, source, o.filename,
      o.lineOffset, o.columnOffset, this.#importCallback ?? contextImport(context), this));
  }

  get context() {
    return this.#context;
  }

  get filename() {
    return this.#filename;
  }

  /**
   * Load its static imports (through the import callback), link and
   * evaluate it. Resolves when the module has run (top-level await
   * included).
   * @param {{ timeout?: number }} [options]
   */
  async evaluate(options) {
    const opts = optionsObject(options, 'options');
    const timeout = validateTimeout(getOption(opts, 'timeout', 'options.timeout'), 'options.timeout') ||
      contextTimeout(this.#context);
    await linkModule(this);
    await evaluateModule(this, timeout);
  }

  // The graph below this module, linked once (cycles included).
  static link(module, seen) {
    if (module.#linked === null) module.#linked = linkRequests(module, seen);
    return module.#linked;
  }
}

function missingCallback() {
  return withCode(new TypeError('A dynamic import callback was not specified.'),
    'ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING');
}

// What an import callback gave (maybe through a promise), as a Module of
// `context`. Source text is compiled once per context and key.
async function toModule(result, specifier, context, callback) {
  if (context.isDisposed) throw new DisposedError('context');
  if (result instanceof Module) {
    if (result.context !== context) {
      throw withCode(new TypeError(result.context.isolate === context.isolate
        ? 'The import callback returned a module of another context'
        : 'The import callback returned a module of another isolate'), 'ERR_VM_MODULE_DIFFERENT_CONTEXT');
    }
    return result;
  }
  let source;
  let filename = specifier;
  if (typeof result === 'string') {
    source = result;
  } else if (result !== null && typeof result === 'object' && typeof result.source === 'string') {
    source = result.source;
    if (result.filename !== undefined) {
      validateString(result.filename, 'filename');
      filename = result.filename;
    }
  } else {
    throw withCode(new TypeError(
      'The import callback must return module source, { source, filename } or a cordon.Module, ' +
      `not ${errors.describe(result)}`), 'ERR_VM_INVALID_IMPORT_RESULT');
  }
  const modules = contextModules(context);
  let module = modules.get(filename);
  if (module === undefined) {
    module = new Module(source, { filename, context, importModuleDynamically: callback });
    modules.set(filename, module);
  }
  return module;
}

// Load and link the static imports of `module`, and theirs.
async function linkRequests(module, seen) {
  const context = module.context;
  const requests = bounded(context, 0, () => binding.moduleRequests(moduleHandle(module)));
  const callback = moduleImport(module);
  for (let i = 0; i < requests.length; i++) {
    if (callback === undefined) throw missingCallback();
    const [specifier, attributes] = requests[i];
    const dep = await toModule(await callback(specifier, module, attributes), specifier, context, callback);
    if (context.isDisposed) throw new DisposedError('context');
    binding.moduleLink(moduleHandle(module), i, moduleHandle(dep));
    if (!seen.has(dep)) {
      seen.add(dep);
      await Module.link(dep, seen);
    }
  }
}

function linkModule(module) {
  return Module.link(module, new Set([module]));
}

async function evaluateModule(module, timeout) {
  const context = module.context;
  // The evaluation promise (a sandbox promise) arrives as a host promise.
  await bounded(context, timeout, () => binding.moduleEvaluate(moduleHandle(module), timeout));
}

// The referrer as the native side hands it over: the live host handle (a
// proxy's target, a Script, a Module), or [kind, raw] for a new handle.
function referrerOf(referrer, context) {
  if (Array.isArray(referrer)) {
    const [kind, raw] = referrer;
    if (kind === 2) return decodeIn(context, raw);
    return new Script(kConstruct, { handle: raw, isolate: context.isolate });
  }
  if (referrer !== null && typeof referrer === 'object' && typeof referrer.proxy === 'function') {
    return referrer.proxy;
  }
  return referrer;
}

// Answer an import() with the module's namespace, or reject it.
async function runImport(resolver, callback, specifier, referrer, attributes, context) {
  const timeout = contextTimeout(context) || SETTLE_TIMEOUT;
  try {
    callback ??= contextImport(context);
    if (callback === undefined) throw missingCallback();
    const result = await callback(specifier, referrerOf(referrer, context), decodeIn(context, attributes));
    const module = await toModule(result, specifier, context, callback);
    await linkModule(module);
    await evaluateModule(module, timeout);
    boundedRaw(context, () => binding.importResolve(resolver, moduleHandle(module), timeout));
  } catch (error) {
    if (context.isDisposed) return; // the import() promise went with it
    try {
      boundedRaw(context, () => binding.settleSandbox(resolver, true, undefined, timeout, errorDescription(error)));
    } catch {
      // the sandbox stopped while reacting: nothing awaits it on the host
    }
  }
}

function errorDescription(error) {
  const [, name, message, code] = errorTuple(error);
  return [name, message, code];
}

// Called by the native layer for each import() in sandbox code.
function importHook(resolver, callback, specifier, referrer, attributes, context) {
  if (context === undefined) return; // its host Context is gone: nothing to answer with
  // Later, from the host loop: the callback is host code, and may be slow.
  Promise.resolve().then(() => runImport(resolver, callback, specifier, referrer, attributes, context));
}

/** Counts of native records alive in this environment (tests, leak checks). */
function liveRecords() {
  return binding.liveRecords();
}

module.exports = {
  Isolate,
  Script,
  Module,
  createContext,
  isContext,
  runInContext,
  runInNewContext,
  compileFunction,
  apply,
  TimeoutError,
  MemoryLimitError,
  DisposedError,
  liveRecords,
  get defaultIsolate() {
    return getDefaultIsolate();
  },
};
