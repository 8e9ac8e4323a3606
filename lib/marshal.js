'use strict';

// Values across the boundary, host side.
//
// encode(value, context) gives the native layer a primitive (undefined,
// null, boolean, number, string) as it is, or an object as [bytes, fns]:
// V8 serialisation bytes, and the host functions found in it, written as
// host objects of type FUNCTION_REF (index, length, name) and wrapped so
// that the sandbox's calls come back through invokeHost().
//
// decode(result, context) reads what the native layer returns: a
// primitive, a Buffer of bytes, or [bytes, handles, names, lengths] when
// the value carries sandbox functions, each of which becomes a host proxy.

const v8 = require('node:v8');
const { isPromise } = require('node:util').types;

const FUNCTION_REF = 13;
const PROMISE_REF = 14;
const EMPTY = Object.freeze([]);
// Node's ArrayBufferView type indices (lib/v8.js); 10 is Buffer.
const VIEW_TYPES = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array,
  Int32Array, Uint32Array, Float32Array, Float64Array, DataView, Uint8Array,
  BigInt64Array, BigUint64Array];
const MAX_DEPTH = 2000;

// Stands for a host function inside a value being serialised: an
// ArrayBufferView, so that the serialiser hands it to _writeHostObject.
class FunctionRef extends Uint8Array {
  constructor(index, fn) {
    super(0);
    this.index = index;
    this.fnLength = Number.isInteger(fn.length) && fn.length >= 0 ? Math.min(fn.length, 65535) : 0;
    this.fnName = typeof fn.name === 'string' ? fn.name : '';
  }
}

// Stands for a host promise the sandbox will await.
class PromiseRef extends Uint8Array {
  constructor(index) {
    super(0);
    this.index = index;
  }
}

class RefSerializer extends v8.DefaultSerializer {
  _writeHostObject(object) {
    if (object instanceof PromiseRef) {
      this.writeUint32(PROMISE_REF);
      this.writeUint32(object.index);
      return;
    }
    if (object instanceof FunctionRef) {
      const name = Buffer.from(object.fnName, 'utf8');
      this.writeUint32(FUNCTION_REF);
      this.writeUint32(object.index);
      this.writeUint32(object.fnLength);
      this.writeUint32(name.length);
      this.writeRawBytes(name);
      return;
    }
    super._writeHostObject(object);
  }
}

class RefDeserializer extends v8.Deserializer {
  constructor(bytes, proxies) {
    super(bytes);
    this.proxies = proxies;
  }

  _readHostObject() {
    const type = this.readUint32();
    if (type === FUNCTION_REF || type === PROMISE_REF) return this.proxies[this.readUint32()];
    const Ctor = VIEW_TYPES[type];
    const byteLength = this.readUint32();
    const raw = this.readRawBytes(byteLength);
    if (Ctor === undefined) throw new TypeError('malformed value from the sandbox');
    const copy = new ArrayBuffer(byteLength);
    new Uint8Array(copy).set(raw);
    return new Ctor(copy, 0, Ctor === DataView ? byteLength : byteLength / Ctor.BYTES_PER_ELEMENT);
  }
}

function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === null || Object.getPrototypeOf(proto) === null;
}

// A copy of `value` with every host function replaced by a FunctionRef.
// Plain objects and arrays are walked; other objects are the serialiser's.
function shadow(value, fns, wrap, seen, depth) {
  if (typeof value === 'function') {
    let ref = seen.get(value);
    if (ref === undefined) {
      ref = new FunctionRef(fns.length, value);
      fns.push(wrap(value));
      seen.set(value, ref);
    }
    return ref;
  }
  if (value === null || typeof value !== 'object') return value;
  if (seen.has(value)) return seen.get(value);
  if (isPromise(value)) {
    const ref = new PromiseRef(fns.length);
    fns.push(value);
    seen.set(value, ref);
    return ref;
  }
  if (depth > MAX_DEPTH) throw new RangeError('the value is nested too deeply');
  if (Array.isArray(value)) {
    const copy = new Array(value.length);
    seen.set(value, copy);
    for (let i = 0; i < value.length; i++) copy[i] = shadow(value[i], fns, wrap, seen, depth + 1);
    return copy;
  }
  if (!isPlainObject(value) || ArrayBuffer.isView(value)) return value;
  const copy = {};
  seen.set(value, copy);
  for (const key of Object.keys(value)) copy[key] = shadow(value[key], fns, wrap, seen, depth + 1);
  return copy;
}

// `wrap(fn)` makes the host callback the sandbox will call for `fn`; host
// promises go in as they are.
function encode(value, wrap) {
  switch (typeof value) {
    case 'undefined': case 'boolean': case 'number': case 'string':
      return value;
    case 'object':
      if (value === null) return value;
      try {
        return [v8.serialize(value), EMPTY];
      } catch {
        // functions (or something the serialiser refuses anyway): walk it
      }
      break;
    default:
      break;
  }
  const fns = [];
  const copy = shadow(value, fns, wrap, new Map(), 0);
  const ser = new RefSerializer();
  ser.writeHeader();
  ser.writeValue(copy);
  return [ser.releaseBuffer(), fns];
}

// `proxy(handle, name, length)` makes the host function for a sandbox one;
// a sandbox promise arrives as a host promise already (length -1).
function decode(result, proxy) {
  if (typeof result !== 'object' || result === null) return result;
  if (!Array.isArray(result)) return v8.deserialize(result);
  const [bytes, handles, names, lengths] = result;
  const proxies = handles.map((h, i) => (lengths[i] < 0 ? h : proxy(h, names[i], lengths[i])));
  if (bytes === null) return proxies[0]; // the value is the reference itself
  const des = new RefDeserializer(bytes, proxies);
  des.readHeader();
  return des.readValue();
}

// Error properties that cross by themselves, or never (the stack).
const ERROR_OWN = new Set(['name', 'message', 'stack', 'code', 'cause']);

// An error's other own data properties (enumerable ones, and `cause`) as
// V8 serialisation bytes, or undefined when there are none. Accessors are
// not called; values that cannot be serialised are left out.
function errorProps(error) {
  const props = { __proto__: null };
  let count = 0;
  const take = (key) => {
    const desc = Reflect.getOwnPropertyDescriptor(error, key);
    if (desc === undefined || !('value' in desc)) return;
    try {
      v8.serialize(desc.value);
    } catch {
      return;
    }
    props[key] = desc.value;
    count++;
  };
  for (const key of Object.keys(error)) {
    if (!ERROR_OWN.has(key)) take(key);
  }
  take('cause');
  return count > 0 ? v8.serialize(props) : undefined;
}

// The other own properties from the sandbox (errorProps' format, written
// by the engine) onto a host error, as data properties; `cause` is not
// enumerable, as Error's constructor makes it.
function addErrorProps(error, bytes) {
  let props;
  try {
    props = v8.deserialize(bytes);
  } catch {
    return;
  }
  if (props === null || typeof props !== 'object') return;
  for (const key of Object.keys(props)) {
    if (key === 'name' || key === 'message' || key === 'stack' || key === 'code') continue;
    Object.defineProperty(error, key, {
      value: props[key], writable: true, configurable: true, enumerable: key !== 'cause',
    });
  }
}

module.exports = { encode, decode, errorProps, addErrorProps };
