'use strict';

// cordon's public API: node:vm's shape over V8 isolates of cordon's own.
// This layer validates every argument once, fills defaults, and turns the
// native layer's statuses into coded errors; src/ trusts what it is given.

const v8 = require('node:v8');
const binding = require('./binding');
const errors = require('./errors');
const {
  validateString,
  validateObject,
  validateInt32,
  validateTimeout,
  validateMemoryLimit,
  getOption,
} = require('./validate');

const { TimeoutError, MemoryLimitError, DisposedError, withCode } = errors;

const DEFAULT_FILENAME = 'evalmachine.<anonymous>';
const DEFAULT_MEMORY_LIMIT_MB = 128;

// Native statuses (src/engine/engine.h, src/cordon.h).
const EEXCEPTION = -1;
const ETERMINATED = -2;
const ECLONE = -3;
const ENOMEM = -4;
const KDISPOSED = -100;
const KTIMEOUT = -101;

const STANDARD_ERRORS = {
  Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError,
};

// What the running call is bounded by, for the TimeoutError's message, and
// which isolate it runs in, for the memory limit's.
let activeTimeout = 0;
let activeIsolate = null;

// Called by the native layer to build the error a failed call throws.
function makeError(kind, name, message, stack, value) {
  switch (kind) {
    case EEXCEPTION: {
      if (name === undefined) {
        // A thrown value that is not an Error crosses as a value.
        return value instanceof Uint8Array ? v8.deserialize(value) : value;
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
      return error;
    }
    case ETERMINATED:
    case KTIMEOUT:
      return new TimeoutError(activeTimeout);
    case ECLONE:
      return withCode(new TypeError(message || 'A value could not be copied across the sandbox boundary'),
        'ERR_CANNOT_CLONE');
    case ENOMEM:
      return new MemoryLimitError(activeIsolate ? activeIsolate.memoryLimitMB : 0);
    case KDISPOSED:
      return new DisposedError();
    default:
      return withCode(new Error(`cordon internal error (${kind}): ${message || ''}`),
        'ERR_CORDON_INTERNAL');
  }
}

function errorTuple(error) {
  try {
    if (error instanceof Error || (error && typeof error === 'object')) {
      return [String(error.name ?? 'Error'), String(error.message ?? '')];
    }
    return ['Error', String(error)];
  } catch {
    return ['Error', 'a host callback threw a value that could not be read'];
  }
}

// Called by the native layer when sandbox code calls a host function: the
// arguments arrive serialised; the result leaves serialised, or as
// [name, message] to be thrown inside the sandbox.
function invoke(fn, bytes) {
  let result;
  try {
    result = fn(...v8.deserialize(bytes));
  } catch (error) {
    return errorTuple(error);
  }
  try {
    return v8.serialize(result);
  } catch (error) {
    return ['TypeError',
      `The result of host function ${fn.name || '<anonymous>'} cannot be copied into the sandbox: ${error.message}`];
  }
}

binding.setup(makeError, invoke);

function decode(result) {
  return typeof result === 'object' && result !== null ? v8.deserialize(result) : result;
}

// ---- handles -------------------------------------------------------------

// Private to this module: the native handle behind each public object.
let isolateHandle;
let contextHandle;
let contextIsolate;
const kConstruct = Symbol('cordon.construct');

class Isolate {
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
    return newContext(this, contextObject, options);
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

class Context {
  #handle;
  #isolate;
  #disposed = false;

  static {
    contextHandle = (context) => {
      if (context.#disposed) throw new DisposedError('context');
      return context.#handle;
    };
    contextIsolate = (context) => context.#isolate;
  }

  static isContext(value) {
    return typeof value === 'object' && value !== null && #handle in value;
  }

  constructor(token, isolate, handle) {
    if (token !== kConstruct) {
      throw withCode(new TypeError('Illegal constructor: use cordon.createContext()'),
        'ERR_ILLEGAL_CONSTRUCTOR');
    }
    this.#isolate = isolate;
    this.#handle = handle;
  }

  get isolate() {
    return this.#isolate;
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

// Split a context object into data (copied in by structured clone) and
// functions (exposed as host callbacks).
function splitGlobals(contextObject) {
  const data = {};
  const names = [];
  const fns = [];
  let hasData = false;
  let descriptors;
  try {
    descriptors = Object.getOwnPropertyDescriptors(contextObject);
  } catch (error) {
    throw errors.invalidArgValue('contextObject', `could not be read (${error?.message ?? error})`, contextObject);
  }
  for (const key of Object.keys(descriptors)) {
    const desc = descriptors[key];
    if (!desc.enumerable || !('value' in desc)) continue;
    if (typeof desc.value === 'function') {
      names.push(key);
      fns.push(desc.value);
    } else {
      data[key] = desc.value;
      hasData = true;
    }
  }
  let bytes;
  if (hasData) {
    try {
      bytes = v8.serialize(data);
    } catch (error) {
      throw withCode(new TypeError(`The "contextObject" argument holds a value that cannot be copied into the sandbox: ${error.message}`),
        'ERR_INVALID_ARG_VALUE');
    }
  }
  return { bytes, names, fns };
}

function newContext(isolate, contextObject, options) {
  if (contextObject === undefined) contextObject = {};
  else validateObject(contextObject, 'contextObject');
  optionsObject(options, 'options');
  const { bytes, names, fns } = splitGlobals(contextObject);
  const handle = binding.contextNew(isolateHandle(isolate), bytes, names, fns);
  return new Context(kConstruct, isolate, handle);
}

/**
 * A new context. `contextObject`'s own enumerable data properties become
 * globals (copied); its functions become host callbacks.
 */
function createContext(contextObject, options) {
  const opts = optionsObject(options, 'options');
  let isolate = getOption(opts, 'isolate', 'options.isolate');
  if (isolate === undefined) isolate = getDefaultIsolate();
  else if (!(isolate instanceof Isolate)) throw errors.invalidArgType('options.isolate', 'an instance of cordon.Isolate', isolate);
  return newContext(isolate, contextObject, opts);
}

function isContext(value) {
  return Context.isContext(value);
}

// Options shared by runInContext and Script: filename or an options object.
function runOptions(options, name) {
  if (typeof options === 'string') {
    return { filename: options, lineOffset: 0, columnOffset: 0, timeout: 0 };
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
  return { filename, lineOffset, columnOffset, timeout };
}

function validateContext(context, name) {
  if (!isContext(context)) throw errors.invalidArgType(name, 'a cordon context (from cordon.createContext())', context);
}

// Every call into a sandbox goes through here, so that errors built by
// makeError know the call's bound and isolate.
function bounded(isolate, timeout, fn, raw = false) {
  const prevTimeout = activeTimeout;
  const prevIsolate = activeIsolate;
  activeTimeout = timeout;
  activeIsolate = isolate;
  try {
    const result = fn();
    return raw ? result : decode(result);
  } finally {
    activeTimeout = prevTimeout;
    activeIsolate = prevIsolate;
  }
}

function runInContext(code, context, options) {
  validateString(code, 'code');
  validateContext(context, 'contextifiedObject');
  const o = runOptions(options, 'options');
  const handle = contextHandle(context);
  const isolate = contextIsolate(context);
  if (isolate.isDisposed) throw new DisposedError();
  return bounded(isolate, o.timeout, () => binding.run(handle, code, o.filename, o.lineOffset, o.columnOffset, o.timeout));
}

function runInNewContext(code, contextObject, options) {
  validateString(code, 'code');
  const opts = typeof options === 'string' ? { filename: options } : optionsObject(options, 'options');
  runOptions(opts, 'options'); // validate before creating anything
  const context = createContext(contextObject, { isolate: getOption(opts, 'isolate', 'options.isolate') });
  try {
    return runInContext(code, context, opts);
  } finally {
    context.dispose();
  }
}

class Script {
  #handle;
  #isolate;

  /**
   * Compile `code` once; run it in any context of its isolate.
   * @param {string} code
   * @param {object|string} [options] filename, lineOffset, columnOffset, isolate
   */
  constructor(code, options) {
    validateString(code, 'code');
    const opts = typeof options === 'string' ? { filename: options } : optionsObject(options, 'options');
    const o = runOptions(opts, 'options');
    let isolate = getOption(opts, 'isolate', 'options.isolate');
    if (isolate === undefined) isolate = getDefaultIsolate();
    else if (!(isolate instanceof Isolate)) throw errors.invalidArgType('options.isolate', 'an instance of cordon.Isolate', isolate);
    this.#isolate = isolate;
    this.#handle = bounded(isolate, 0,
      () => binding.scriptNew(isolateHandle(isolate), code, o.filename, o.lineOffset, o.columnOffset), true);
  }

  get isolate() {
    return this.#isolate;
  }

  runInContext(context, options) {
    validateContext(context, 'contextifiedObject');
    if (contextIsolate(context) !== this.#isolate) {
      throw errors.invalidArgValue('contextifiedObject', 'must be a context of the isolate the script was compiled in', context);
    }
    const { timeout } = runOptions(options, 'options');
    const handle = contextHandle(context);
    if (this.#isolate.isDisposed) throw new DisposedError();
    return bounded(this.#isolate, timeout, () => binding.scriptRun(this.#handle, handle, timeout));
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

/** Counts of native records alive in this environment (tests, leak checks). */
function liveRecords() {
  return binding.liveRecords();
}

module.exports = {
  Isolate,
  Script,
  createContext,
  isContext,
  runInContext,
  runInNewContext,
  TimeoutError,
  MemoryLimitError,
  DisposedError,
  liveRecords,
  get defaultIsolate() {
    return getDefaultIsolate();
  },
};
