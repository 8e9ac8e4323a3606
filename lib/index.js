'use strict';

// cordon's public API: node:vm's shape over V8 isolates of cordon's own.
// This layer validates every argument once, fills defaults, and turns the
// native layer's statuses into coded errors; src/ trusts what it is given.

const { EventEmitter } = require('node:events');
const binding = require('./binding');
const errors = require('./errors');
const marshal = require('./marshal');
const cancel = require('./cancel');
const { isNativeError } = require('node:util').types;
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
const KCPUTIMEOUT = -103;
const KBUSY = -104;
const EUNSAFE = -7;
const KSHUTDOWN = -105;
const KABORTED = -106;

const STANDARD_ERRORS = {
  Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError,
};

// What the running call is bounded by, for the TimeoutError's message, and
// which context it runs in, for the memory limit's and for proxies of
// functions in a thrown value.
let activeTimeout = 0;
let activeCpuTimeout = 0;
let activeContext = null;
// When the running unit of work's wall bound ends (performance.now() ms;
// 0: unbounded). What it spawns inherits it: sandbox promises that cross
// out reject with a TimeoutError then, and host-promise settlements that
// would resume its sandbox code after it are dropped.
let activeDeadline = 0;
// Its AbortSignal, if it has one: an abort ends what it spawned likewise.
let activeSignal;
const now = () => performance.now();
// The isolate a Script is being compiled in (it has no context).
let compilingIsolate = null;

// A memory stop. When the sandbox still holds more than its limit after a
// full collection (a global keeps what it allocated), the isolate cannot
// run within its limit again: it is disposed, so that its memory goes back
// now, and the error says so (isolateDisposed).
function memoryLimitError(isolate) {
  const error = new MemoryLimitError(isolate ? isolate.memoryLimitMB : 0);
  error.isolateDisposed = false;
  if (isolate && !isolate.isDisposed) {
    const limit = isolate.memoryLimitMB * 1024 * 1024;
    let stats = null;
    try {
      stats = isolate.getHeapStatistics();
    } catch {
      // busy (a sync call from a callback of its own async run): left open
    }
    if (stats !== null && (stats.usedHeapSize > limit || stats.externalMemory > limit)) {
      error.isolateDisposed = true;
      isolate.dispose();
    }
  }
  return error;
}

// Called by the native layer to build the error a failed call throws.
function makeError(kind, name, message, stack, value, code) {
  switch (kind) {
    case EEXCEPTION: {
      if (name === undefined) {
        // A thrown value that is not an Error crosses as a value.
        return activeContext ? decodeIn(activeContext, value) : marshal.decode(value, null);
      }
      if (name === 'DisposedError' && code === 'ERR_ISOLATE_DISPOSED') return new DisposedError('context');
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
      if (value !== undefined) marshal.addErrorProps(error, value);
      return error;
    }
    case ETERMINATED:
    case KTIMEOUT:
      return new TimeoutError(activeTimeout);
    case KCPUTIMEOUT:
      return new TimeoutError(activeCpuTimeout, 'cpu');
    case KBUSY:
      return withCode(new Error(
        'A host callback of an async run called into the same isolate synchronously, which would wait for ' +
        'itself; use the async form (context.run, script.run, cordon.applyAsync) there'), 'ERR_ISOLATE_BUSY');
    case EUNSAFE:
      return withCode(new Error(
        'The host runs with --allow-natives-syntax, which would let sandbox code call V8 runtime functions ' +
        '(%AbortJS ends the process); pass { allowUnsafeHostFlags: true } to make the isolate anyway'),
      'ERR_CORDON_UNSAFE_HOST_FLAGS');
    case KABORTED:
      return new cancel.AbortError();
    case KSHUTDOWN:
      return withCode(new Error('The process is exiting: async runs were stopped'), 'ERR_CORDON_SHUTDOWN');
    case ECLONE:
      return withCode(new TypeError(message || 'A value could not be copied across the sandbox boundary'),
        'ERR_CANNOT_CLONE');
    case ENOMEM:
      return memoryLimitError(activeContext ? activeContext.isolate : compilingIsolate);
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

// The host side of a sandbox promise. Sandbox code decides when it
// rejects and can hand it to any host function, so its rejection must not
// become Node's process-level unhandled rejection (which ends the process)
// when host code never looks at it. Node is told it is handled; `then`
// (which await, catch, finally and Promise.all go through, since the
// species is Promise) records that host code observed it; one unobserved
// when it rejects is reported on its isolate's 'unhandledRejection' event.
class SandboxPromise extends Promise {
  #observed = false;

  static get [Symbol.species]() {
    return Promise;
  }

  static observed(promise) {
    return promise.#observed;
  }

  then(onFulfilled, onRejected) {
    if (#observed in this) this.#observed = true;
    return super.then(onFulfilled, onRejected);
  }
}

function rejectSandboxPromise(promise, reject, reason, context) {
  reject(reason);
  // Later than Node's own check (after the microtasks that follow).
  setImmediate(() => {
    if (SandboxPromise.observed(promise) || context === null) return;
    const { isolate } = context;
    if (isolate.listenerCount('unhandledRejection') > 0) isolate.emit('unhandledRejection', reason, context);
  });
}

// The host promise for a sandbox promise; the native layer settles it from
// the host loop (state 1 fulfilled, 2 rejected, 3 the isolate went away).
function makeDeferred() {
  const context = activeContext;
  let resolve;
  let reject;
  const promise = new SandboxPromise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  Promise.prototype.then.call(promise, undefined, () => {}); // handled, for Node
  // Made by a bounded unit of work: it rejects when that bound ends (the
  // timer keeps the loop alive until then, since it can still settle).
  let timer = null;
  if (activeDeadline > 0) {
    const timeout = activeTimeout;
    const deadline = activeDeadline;
    // (A timer counts from the loop's cached time, which may lag: it can
    // fire early, while sandbox code of the unit may still run. Not before
    // the deadline, then.)
    const expire = () => {
      const left = deadline - now();
      if (left > 0) {
        timer = setTimeout(expire, Math.ceil(left));
        return;
      }
      timer = null;
      unwatch();
      rejectSandboxPromise(promise, reject, new TimeoutError(timeout), context);
    };
    timer = setTimeout(expire, Math.ceil(Math.max(0, deadline - now())));
  }
  const signal = activeSignal;
  const unwatch = cancel.watch(signal, () => {
    if (timer !== null) clearTimeout(timer);
    rejectSandboxPromise(promise, reject, cancel.abortError(signal), context);
  });
  return {
    promise,
    settle(state, value, name, message, stack, code) {
      if (timer !== null) clearTimeout(timer);
      unwatch();
      if (state === 1) {
        resolve(decodeIn(context, value));
      } else if (state === 2) {
        rejectSandboxPromise(promise, reject, name !== undefined
          ? makeError(EEXCEPTION, name, message, stack, value, code)
          : decodeIn(context, value), context);
      } else {
        rejectSandboxPromise(promise, reject, new DisposedError(), context);
      }
    },
  };
}

// A fair share for the host loop: settlements resume sandbox code from the
// host's microtask queue, where a sandbox that awaits host promises in a
// loop would keep the host loop from ever turning again (no timer, no I/O,
// no abort). Once settlements have run for SETTLE_SLICE ms without the
// loop turning, the next ones wait for its next turn (setImmediate).
const SETTLE_SLICE = 10;
let sliceStart = -1; // when this turn's settlements began; -1: not yet
function sliceLeft() {
  const t = now();
  if (sliceStart < 0) {
    sliceStart = t;
    setImmediate(() => { sliceStart = -1; });
  }
  return t - sliceStart < SETTLE_SLICE;
}

// The sandbox awaits host promise `promise`: settle its side (the resolver
// `handle`) when it settles, and run the sandbox's microtasks then, bounded
// by the context's timeout or SETTLE_TIMEOUT.
function adopt(promise, handle) {
  const context = activeContext;
  const deadline = activeDeadline;
  const signal = activeSignal;
  const settle = (rejected, value) => {
    if (context === null || context.isDisposed || signal?.aborted) return;
    if (!sliceLeft()) {
      setImmediate(() => settle(rejected, value));
      return;
    }
    let timeout = contextTimeout(context) || SETTLE_TIMEOUT;
    if (deadline > 0) {
      // The unit of work that awaits it has run out of time: its sandbox
      // code is not resumed (its promise result has rejected already).
      const left = Math.ceil(deadline - now());
      if (left <= 0) return;
      timeout = Math.min(timeout, left);
    }
    let encoded;
    let description;
    if (rejected && isNativeError(value)) {
      // As a host callback's errors cross: name, message, code and data.
      description = errorDescription(value);
    } else {
      try {
        encoded = encodeIn(context, value);
      } catch (error) {
        rejected = true;
        description = ['TypeError', `The settled value cannot be copied into the sandbox: ${error.message}`,
          'ERR_CANNOT_CLONE', undefined];
      }
    }
    try {
      boundedRaw(context, () => binding.settleSandbox(handle, rejected, encoded, timeout, description,
        jobDone(context, timeout, deadline, signal), deadline > 0), timeout, 0, deadline, signal);
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
    ? makeError(EEXCEPTION, name, message, stack, value, code)
    : decodeIn(context, value);
  isolate.emit('unhandledRejection', reason, context);
}

// The native layer runs host work of an async job (its host callbacks,
// import() and host promises, its result) with the job's context and
// bounds active: jobScope(done) enters them (jobScope(null): a job of its
// own, changing nothing), jobScope() leaves.
const scopes = [];
function jobScope(done, elapsed) {
  if (done === undefined) {
    [activeTimeout, activeCpuTimeout, activeContext, activeDeadline, activeSignal] = scopes.pop();
    return;
  }
  scopes.push([activeTimeout, activeCpuTimeout, activeContext, activeDeadline, activeSignal]);
  if (done === null) return;
  // An async run's bound counts from when its runner started it (elapsed
  // ms ago; undefined: it never started).
  if (done.deadline === undefined) {
    done.deadline = done.timeout > 0 && done.untilSettled ? now() - (elapsed ?? 0) + done.timeout : 0;
  }
  activeTimeout = done.timeout;
  activeCpuTimeout = done.cpuTimeout;
  activeContext = done.context;
  activeDeadline = done.deadline;
  activeSignal = done.signal;
}

// The `done` of a job of the native layer's own (a settlement queued behind
// an async run): nothing waits for its outcome; it carries the scope.
function jobDone(context, timeout, deadline, signal) {
  const done = () => {};
  done.context = context;
  done.timeout = timeout;
  done.cpuTimeout = 0;
  done.deadline = deadline;
  done.signal = signal;
  return done;
}

binding.setup(makeError, makeDeferred, adopt, importHook, rejectionHook, jobScope, binding.PENDING);
// process.exit() runs no cleanup hooks: stop the runner threads before
// Node tears the platform down under them.
process.on('exit', () => binding.shutdown());

// ---- values and functions across the boundary -------------------------------

// What the sandbox sees of a host error: its name, message and code and
// its other own data properties (never its stack: host paths stay out).
function errorTuple(error) {
  try {
    if (error !== null && (typeof error === 'object' || typeof error === 'function')) {
      const { code } = error;
      return [1, String(error.name ?? 'Error'), String(error.message ?? ''), typeof code === 'string' ? code : undefined,
        marshal.errorProps(error)];
    }
    return [1, 'Error', String(error), undefined, undefined];
  } catch {
    return [1, 'Error', 'a host callback threw a value that could not be read', undefined, undefined];
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

// The wrapper does not hold its context: it lives in the sandbox heap's
// reach (through the sandbox function that calls it), and an edge back to
// the host Context would close a cycle through both heaps that neither
// collector can see; a WeakRef would keep the Context alive until the
// host's current job ends. The native layer hands it in with each call
// (undefined once the Context is gone).
function encodeIn(context, value) {
  return marshal.encode(value, (fn) => (args, ctx) => invokeHost(fn, ctx ?? null, args));
}

// `timeout`/`cpuTimeout`: the bounds of the run that made the value, under
// which its functions (a result's then, toString, toJSON...) then run
// unless a caller gives others; undefined: the context's.
function decodeIn(context, result, timeout, cpuTimeout) {
  return marshal.decode(result, (handle, name, length) => makeProxy(handle, name, length, context, timeout || undefined,
    undefined, cpuTimeout));
}

// Host proxies of sandbox functions, and what each one calls.
const proxyTargets = new WeakMap();

function makeProxy(handle, name, length, context, timeout, target = {}, cpuTimeout = undefined) {
  target.handle = handle;
  target.context = context;
  target.timeout = timeout;
  target.cpuTimeout ??= cpuTimeout || 0;
  // A thenable's then: the host's promise machinery calls it from its
  // microtask queue, and a then that resolves with another thenable keeps
  // it doing so without end. It runs under the bound of the call that
  // handed it out, and the thens of one chain (handed out by a then of it)
  // share that bound as a budget per host loop turn.
  if (name === 'then') {
    target.chain = activeChain ?? { turn: -1, spent: 0 };
    if (timeout === undefined && activeTimeout > 0) target.timeout = activeTimeout;
  }
  const proxy = {
    // A method: callable with any `this`, and not a constructor.
    [name](...args) {
      return callTarget(target, this, args, target.timeout ?? (context ? contextTimeout(context) : 0),
        target.cpuTimeout);
    },
  }[name];
  Object.defineProperty(proxy, 'length', { value: length, configurable: true });
  proxyTargets.set(proxy, target);
  target.proxy = proxy; // for import(): the native side holds `target` weakly
  return proxy;
}

function targetContext(target) {
  const { context } = target;
  if (context === null) throw new DisposedError('context');
  if (context.isDisposed) throw new DisposedError(context.isolate.isDisposed ? 'isolate' : 'context');
  return context;
}

// Host loop turns, counted while thens run (a setImmediate ends a turn).
let turn = 0;
let turnEnding = false;
function currentTurn() {
  if (!turnEnding) {
    turnEnding = true;
    setImmediate(() => {
      turnEnding = false;
      turn++;
    });
  }
  return turn;
}
let activeChain = null; // the chain of the then running

function callTarget(target, thisArg, args, timeout, cpuTimeout) {
  if (target.chain !== undefined) return callThen(target, thisArg, args, timeout, cpuTimeout);
  return callTargetRaw(target, thisArg, args, timeout, cpuTimeout);
}

function callThen(target, thisArg, args, timeout, cpuTimeout) {
  const { chain } = target;
  const t = currentTurn();
  if (chain.turn !== t) {
    chain.turn = t;
    chain.spent = 0;
  }
  if (chain.spent >= (timeout || SETTLE_TIMEOUT)) throw new TimeoutError(timeout);
  const prevChain = activeChain;
  activeChain = chain;
  const t0 = now();
  try {
    return callTargetRaw(target, thisArg, args, timeout, cpuTimeout);
  } finally {
    activeChain = prevChain;
    chain.spent += now() - t0;
  }
}

function callTargetRaw(target, thisArg, args, timeout, cpuTimeout) {
  const context = targetContext(target);
  const { handle } = target;
  const n = args.length;
  const recv = encodeArg(context, thisArg, -1);
  // The hot path of every call: no closure, no spread for a few arguments.
  const prevTimeout = activeTimeout;
  const prevCpuTimeout = activeCpuTimeout;
  const prevContext = activeContext;
  const prevDeadline = activeDeadline;
  activeTimeout = timeout;
  activeCpuTimeout = cpuTimeout;
  activeContext = context;
  activeDeadline = timeout > 0 ? now() + timeout : 0;
  let result;
  try {
    switch (n) {
      case 0: result = binding.call(handle, timeout, cpuTimeout, recv); break;
      case 1: result = binding.call(handle, timeout, cpuTimeout, recv, encodeArg(context, args[0], 0)); break;
      case 2:
        result = binding.call(handle, timeout, cpuTimeout, recv, encodeArg(context, args[0], 0),
          encodeArg(context, args[1], 1));
        break;
      default: {
        const encoded = new Array(n);
        for (let i = 0; i < n; i++) encoded[i] = encodeArg(context, args[i], i);
        result = binding.call(handle, timeout, cpuTimeout, recv, ...encoded);
      }
    }
  } finally {
    activeTimeout = prevTimeout;
    activeCpuTimeout = prevCpuTimeout;
    activeContext = prevContext;
    activeDeadline = prevDeadline;
  }
  if (typeof result === 'object' && result !== null) {
    return result === binding.PENDING ? binding.failed() : decodeIn(context, result, timeout, cpuTimeout);
  }
  return result;
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
// makeError know the call's bounds and context.
// `untilSettled` false: the bound covers the call itself, not the promises
// it hands out.
function bounded(context, timeout, fn, cpuTimeout = 0, untilSettled = true, signal = undefined) {
  if (signal?.aborted) throw cancel.abortError(signal);
  const deadline = timeout > 0 && untilSettled ? now() + timeout : 0;
  const result = boundedRaw(context, fn, timeout, cpuTimeout, deadline, signal);
  return typeof result === 'object' && result !== null ? decodeIn(context, result, timeout, cpuTimeout) : result;
}

// The same for native calls that return handles rather than values. With
// no bounds given it runs under the active ones.
function boundedRaw(context, fn, timeout = activeTimeout, cpuTimeout = activeCpuTimeout,
  deadline = timeout === activeTimeout ? activeDeadline : 0, signal = activeSignal) {
  const prevTimeout = activeTimeout;
  const prevCpuTimeout = activeCpuTimeout;
  const prevContext = activeContext;
  const prevDeadline = activeDeadline;
  const prevSignal = activeSignal;
  activeTimeout = timeout;
  activeCpuTimeout = cpuTimeout;
  activeContext = context;
  activeDeadline = deadline;
  activeSignal = signal;
  try {
    return fn();
  } finally {
    activeTimeout = prevTimeout;
    activeCpuTimeout = prevCpuTimeout;
    activeContext = prevContext;
    activeDeadline = prevDeadline;
    activeSignal = prevSignal;
  }
}

// An async call: `start(done)` queues a job on a runner thread; the native
// layer holds `done` until it calls done(0, result) or done(status,
// ...makeError's arguments) from the host loop, inside jobScope(done).
// `done.keep` holds the handles the job uses (a Script, a function's
// target) until then.
//
// `signal` aborts it: its promise rejects with an AbortError at once, and
// the job is taken off its queue or stopped. Disposing the context rejects
// it with a DisposedError the same way.
function runAsync(context, timeout, cpuTimeout, keep, start, untilSettled = true, signal = undefined) {
  if (signal?.aborted) return Promise.reject(cancel.abortError(signal));
  return new Promise((resolve, reject) => {
    const jobs = contextJobs(context);
    // (id and unwatch are set below, before anything can call these.)
    const job = (error) => {
      end();
      try {
        binding.isolateAbort(isolateHandle(context.isolate), id);
      } catch {
        // the isolate is gone, and the job with it
      }
      reject(error);
    };
    const end = () => {
      unwatch();
      jobs.delete(job);
    };
    // done(0, result), or done(status, kind, name, message, stack, value, code)
    const done = (status, a, name, message, stack, value, code) => {
      end();
      if (status === 0) {
        resolve(typeof a === 'object' && a !== null ? decodeIn(context, a, timeout, cpuTimeout) : a);
        return;
      }
      reject(makeError(a, name, message, stack, value, code));
    };
    done.keep = keep;
    done.context = context;
    done.timeout = timeout;
    done.cpuTimeout = cpuTimeout;
    done.untilSettled = untilSettled;
    done.signal = signal;
    const id = start(done);
    jobs.add(job);
    const unwatch = cancel.watch(signal, () => job(cancel.abortError(signal)));
  });
}

// ---- isolates ---------------------------------------------------------------

// Private to this module: the native handle behind each public object.
let isolateHandle;
let contextHandle;
let contextTimeout;
let contextImport;
let contextModules;
let contextJobs;
const kConstruct = Symbol('cordon.construct');

// Host V8 flags that install globals under a name cordon cannot know, so
// cannot take out of sandbox contexts (the fixed names are, in the engine;
// --allow-natives-syntax is caught there by asking V8).
const UNSAFE_FLAG = /^--(?:expose[-_]gc[-_]as|expose[-_]cputracemark[-_]as)(?:=|$)/;

function refuseUnsafeFlags() {
  const args = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  const flag = args.find((arg) => UNSAFE_FLAG.test(arg));
  if (flag === undefined) return;
  throw withCode(new Error(
    `The host runs with ${flag.split('=')[0]}, which installs a global cordon cannot remove from sandboxes; ` +
    'pass { allowUnsafeHostFlags: true } to make the isolate anyway'), 'ERR_CORDON_UNSAFE_HOST_FLAGS');
}

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
   * @param {{ memoryLimitMB?: number, allowUnsafeHostFlags?: boolean }} [options]
   */
  constructor(options = {}) {
    super();
    validateObject(options, 'options');
    let limit = getOption(options, 'memoryLimitMB', 'options.memoryLimitMB');
    limit = limit === undefined
      ? DEFAULT_MEMORY_LIMIT_MB
      : validateMemoryLimit(limit, 'options.memoryLimitMB');
    const unsafe = getOption(options, 'allowUnsafeHostFlags', 'options.allowUnsafeHostFlags');
    if (unsafe !== undefined) validateBoolean(unsafe, 'options.allowUnsafeHostFlags');
    if (unsafe !== true) refuseUnsafeFlags();
    this.#memoryLimitMB = limit;
    this.#handle = binding.isolateNew(limit, unsafe === true);
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

  /**
   * Wall-clock time the isolate has spent running (sync and async runs and
   * its tasks), in nanoseconds.
   * @returns {bigint}
   */
  get wallTime() {
    return binding.isolateTimes(isolateHandle(this))[0];
  }

  /**
   * CPU time the sandbox has spent, in nanoseconds, host callbacks left
   * out. Async runs and runs with a cpuTimeout read the thread's CPU clock;
   * other sync runs count their wall time (see docs/api.md).
   * @returns {bigint}
   */
  get cpuTime() {
    return binding.isolateTimes(isolateHandle(this))[1];
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
  #jobs = new Set(); // its async jobs not yet settled: cancel(error)

  static {
    contextHandle = (context) => {
      if (context.#disposed) throw new DisposedError('context');
      if (context.#isolate.isDisposed) throw new DisposedError();
      return context.#handle;
    };
    contextTimeout = (context) => context.#timeout;
    contextImport = (context) => context.#importCallback;
    contextModules = (context) => context.#modules;
    contextJobs = (context) => context.#jobs;
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

  /**
   * Run code in this context on a runner thread; resolves with its
   * completion value. The host's event loop keeps turning meanwhile.
   * @param {string} code
   * @param {object|string} [options] filename, lineOffset, columnOffset,
   *   timeout, cpuTimeout, importModuleDynamically
   * @returns {Promise<any>}
   */
  run(code, options) {
    try {
      validateString(code, 'code');
      const o = sourceOptions(options, 'options');
      const handle = contextHandle(this);
      const timeout = o.timeout || this.#timeout;
      const importCallback = (typeof options === 'object' ? importOption(o.opts) : undefined) ??
        this.#importCallback;
      return runAsync(this, timeout, o.cpuTimeout, this, (done) => binding.runAsync(handle, code, o.filename,
        o.lineOffset, o.columnOffset, timeout, importCallback, o.cpuTimeout, done), o.untilSettled, o.signal);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Free the context. Its async runs, queued or running, are stopped and
   * reject with a DisposedError; the isolate's other contexts go on.
   * Idempotent.
   */
  dispose() {
    if (this.#disposed) return;
    for (const job of [...this.#jobs]) job(new DisposedError('context'));
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
    return {
      opts: { filename: options }, filename: options, lineOffset: 0, columnOffset: 0, timeout: 0, cpuTimeout: 0,
      untilSettled: true, signal: undefined,
    };
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
  const cpuTimeout = validateTimeout(getOption(opts, 'cpuTimeout', `${name}.cpuTimeout`), `${name}.cpuTimeout`);
  return {
    opts, filename, lineOffset, columnOffset, timeout, cpuTimeout, untilSettled: untilSettledOption(opts, name),
    signal: cancel.validateSignal(getOption(opts, 'signal', `${name}.signal`), `${name}.signal`),
  };
}

// options.untilSettled (default true): a run's wall bound covers the
// promises it hands out until they settle; false bounds the run itself.
function untilSettledOption(opts, name) {
  const value = getOption(opts, 'untilSettled', `${name}.untilSettled`);
  if (value === undefined) return true;
  validateBoolean(value, `${name}.untilSettled`);
  return value;
}

// { timeout, cpuTimeout } of a run's options; the context's timeout when
// none is given.
function runBounds(options, context) {
  if (options === undefined) {
    return { timeout: contextTimeout(context), cpuTimeout: 0, untilSettled: true, signal: undefined };
  }
  const opts = optionsObject(options, 'options');
  const timeout = validateTimeout(getOption(opts, 'timeout', 'options.timeout'), 'options.timeout') ||
    contextTimeout(context);
  const cpuTimeout = validateTimeout(getOption(opts, 'cpuTimeout', 'options.cpuTimeout'), 'options.cpuTimeout');
  return {
    timeout, cpuTimeout, untilSettled: untilSettledOption(opts, 'options'),
    signal: cancel.validateSignal(getOption(opts, 'signal', 'options.signal'), 'options.signal'),
  };
}

function runInContext(code, context, options) {
  return runIn(code, context, options, false);
}

// `disposeUnused`: dispose the context after the run unless its result
// refers into it (functions, promises), which keep it until collected.
function runIn(code, context, options, disposeUnused) {
  validateString(code, 'code');
  validateContext(context, 'contextifiedObject');
  const o = sourceOptions(options, 'options');
  const handle = contextHandle(context);
  const timeout = o.timeout || contextTimeout(context);
  const importCallback = (typeof options === 'object' ? importOption(o.opts) : undefined) ??
    contextImport(context);
  const run = () => binding.run(handle, code, o.filename, o.lineOffset, o.columnOffset, timeout, importCallback,
    o.cpuTimeout);
  if (!disposeUnused) return bounded(context, timeout, run, o.cpuTimeout, o.untilSettled, o.signal);
  if (o.signal?.aborted) {
    context.dispose();
    throw cancel.abortError(o.signal);
  }
  return boundedOnce(context, timeout, run, o.cpuTimeout, o.untilSettled, o.signal);
}

// bounded() in a context made for this one run: disposed after it, unless
// the result refers into it (functions, promises: then it is freed once
// the host collects them, as node:vm's contexts are).
function boundedOnce(context, timeout, run, cpuTimeout, untilSettled, signal) {
  let raw;
  try {
    raw = boundedRaw(context, run, timeout, cpuTimeout, timeout > 0 && untilSettled ? now() + timeout : 0, signal);
  } catch (error) {
    context.dispose();
    throw error;
  }
  // ([bytes, handles, ...]: the value carries references)
  if (!Array.isArray(raw)) context.dispose();
  return typeof raw === 'object' && raw !== null ? decodeIn(context, raw, timeout, cpuTimeout) : raw;
}

function runInNewContext(code, contextObject, options) {
  validateString(code, 'code');
  const { opts } = sourceOptions(options, 'options'); // validate before creating anything
  const context = createContext(contextObject, {
    isolate: getOption(opts, 'isolate', 'options.isolate'),
    importModuleDynamically: importOption(opts),
  });
  return runIn(code, context, opts, true);
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
    compilingIsolate = isolate;
    let made;
    try {
      made = boundedRaw(null, () => binding.scriptNew(isolateHandle(isolate), code,
        o.filename, o.lineOffset, o.columnOffset, cache.cachedData, cache.produceCachedData, importCallback, this));
    } finally {
      compilingIsolate = null;
    }
    const [handle, rejected, produced] = made;
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
    const handle = this.#contextFor(context);
    const { timeout, cpuTimeout, untilSettled, signal } = runBounds(options, context);
    return bounded(context, timeout, () => binding.scriptRun(this.#handle, handle, timeout, cpuTimeout), cpuTimeout,
      untilSettled, signal);
  }

  /**
   * Run the script in `context` on a runner thread; resolves with its
   * completion value.
   * @param {Context} context
   * @param {{ timeout?: number, cpuTimeout?: number }} [options]
   * @returns {Promise<any>}
   */
  run(context, options) {
    try {
      const handle = this.#contextFor(context);
      const { timeout, cpuTimeout, untilSettled, signal } = runBounds(options, context);
      const script = this.#handle;
      return runAsync(context, timeout, cpuTimeout, [this, context],
        (done) => binding.scriptRunAsync(script, handle, timeout, cpuTimeout, done), untilSettled, signal);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #contextFor(context) {
    validateContext(context, 'contextifiedObject');
    if (context.isolate !== this.#isolate) {
      throw errors.invalidArgValue('contextifiedObject', 'must be a context of the isolate the script was compiled in', context);
    }
    return contextHandle(context);
  }

  runInNewContext(contextObject, options) {
    const context = createContext(contextObject, { isolate: this.#isolate });
    const handle = this.#contextFor(context);
    const { timeout, cpuTimeout, untilSettled, signal } = runBounds(options, context);
    if (signal?.aborted) {
      context.dispose();
      throw cancel.abortError(signal);
    }
    return boundedOnce(context, timeout, () => binding.scriptRun(this.#handle, handle, timeout, cpuTimeout), cpuTimeout,
      untilSettled, signal);
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
  target.cpuTimeout = o.cpuTimeout;
  const fn = makeProxy(fnHandle, name, length, context, o.timeout || undefined, target);
  setCacheResult(fn, cache, rejected, produced);
  return fn;
}

/**
 * Call a sandbox function with `thisArg` and `args`, bounded by
 * `options.timeout` instead of the function's default.
 */
function applyArgs(fn, args, options) {
  const target = typeof fn === 'function' ? proxyTargets.get(fn) : undefined;
  if (target === undefined) throw errors.invalidArgType('fn', 'a function from a cordon sandbox', fn);
  if (args === undefined) args = [];
  else if (!Array.isArray(args)) throw errors.invalidArgType('args', 'an array', args);
  const opts = optionsObject(options, 'options');
  const timeout = validateTimeout(getOption(opts, 'timeout', 'options.timeout'), 'options.timeout') ||
    target.timeout || (target.context ? contextTimeout(target.context) : 0);
  const cpuTimeout = validateTimeout(getOption(opts, 'cpuTimeout', 'options.cpuTimeout'), 'options.cpuTimeout') ||
    target.cpuTimeout;
  const signal = cancel.validateSignal(getOption(opts, 'signal', 'options.signal'), 'options.signal');
  return { target, args, timeout, cpuTimeout, signal };
}

function apply(fn, thisArg, args, options) {
  const a = applyArgs(fn, args, options);
  if (a.signal?.aborted) throw cancel.abortError(a.signal);
  return callTarget(a.target, thisArg, a.args, a.timeout, a.cpuTimeout);
}

/**
 * apply() on a runner thread: resolves with what the sandbox function
 * returned. The host's event loop keeps turning meanwhile.
 */
function applyAsync(fn, thisArg, args, options) {
  try {
    const { target, args: list, timeout, cpuTimeout, signal } = applyArgs(fn, args, options);
    const context = targetContext(target);
    const encoded = list.map((arg, i) => encodeArg(context, arg, i));
    const recv = encodeArg(context, thisArg, -1);
    return runAsync(context, timeout, cpuTimeout, target,
      (done) => binding.callAsync(target.handle, timeout, cpuTimeout, done, recv, ...encoded), true, signal);
  } catch (error) {
    return Promise.reject(error);
  }
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
  #evaluated = false; // evaluate() fulfilled

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
   * A copy of the module's exports as they are now (functions by
   * reference, under the context's timeout), once evaluate() has
   * fulfilled; each read copies them again, so later changes to its
   * bindings show.
   */
  get namespace() {
    if (!this.#evaluated) {
      throw withCode(new Error('The module must be evaluated before its namespace is read'), 'ERR_VM_MODULE_STATUS');
    }
    const timeout = contextTimeout(this.#context);
    const handle = this.#handle;
    contextHandle(this.#context); // (disposed: DisposedError)
    return bounded(this.#context, timeout, () => binding.moduleNamespace(handle, timeout));
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
    const signal = cancel.validateSignal(getOption(opts, 'signal', 'options.signal'), 'options.signal');
    if (signal?.aborted) throw cancel.abortError(signal);
    const work = (async () => {
      await linkModule(this);
      await evaluateModule(this, timeout, signal);
      this.#evaluated = true;
    })();
    if (signal === undefined) return work;
    // Aborted: rejects at once; the module's code is not resumed after.
    return new Promise((resolve, reject) => {
      const unwatch = cancel.watch(signal, () => reject(cancel.abortError(signal)));
      work.then((v) => { unwatch(); resolve(v); }, (e) => { unwatch(); reject(e); });
    });
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

async function evaluateModule(module, timeout, signal) {
  const context = module.context;
  // The evaluation promise (a sandbox promise) arrives as a host promise.
  await bounded(context, timeout, () => binding.moduleEvaluate(moduleHandle(module), timeout), 0, true, signal);
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
      boundedRaw(context, () => binding.settleSandbox(resolver, true, undefined, timeout, errorDescription(error),
        jobDone(context, timeout)));
    } catch {
      // the sandbox stopped while reacting: nothing awaits it on the host
    }
  }
}

function errorDescription(error) {
  return errorTuple(error).slice(1);
}

// Called by the native layer for each import() in sandbox code.
function importHook(resolver, callback, specifier, referrer, attributes, context) {
  if (context === undefined) return; // its host Context is gone: nothing to answer with
  // Later, from the host loop: the callback is host code, and may be slow.
  Promise.resolve().then(() => runImport(resolver, callback, specifier, referrer, attributes, context));
}

/**
 * Key the tags of code caches (cachedData) with a secret of at least 16
 * bytes, so that caches made in one process verify in every process that
 * sets the same key. Without it the key is random per process.
 */
function setCodeCacheKey(key) {
  let bytes;
  if (typeof key === 'string') {
    bytes = Buffer.from(key, 'utf8');
  } else if (ArrayBuffer.isView(key)) {
    bytes = new Uint8Array(key.buffer, key.byteOffset, key.byteLength).slice();
  } else {
    throw errors.invalidArgType('key', 'of type string or an instance of Buffer, TypedArray, or DataView', key);
  }
  if (bytes.byteLength < 16) throw errors.invalidArgValue('key', 'must be at least 16 bytes long', key);
  binding.setCodeCacheKey(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
}

/** Counts of native records alive in this environment (tests, leak checks). */
function liveRecords() {
  return binding.liveRecords();
}

module.exports = {
  Isolate,
  Script,
  Module,
  Context, // for instanceof and types; made only by createContext()
  createContext,
  isContext,
  runInContext,
  runInNewContext,
  compileFunction,
  apply,
  applyAsync,
  setCodeCacheKey,
  TimeoutError,
  AbortError: cancel.AbortError,
  MemoryLimitError,
  DisposedError,
  liveRecords,
  get defaultIsolate() {
    return getDefaultIsolate();
  },
};
