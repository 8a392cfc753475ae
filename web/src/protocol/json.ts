/**
 * A strict JSON parser for the wire types (PROTOCOL.md §8), so this client refuses exactly what
 * the Rust core (serde_json with `deny_unknown_fields`) refuses.
 *
 * `JSON.parse` would differ from serde_json in three ways that matter to a security protocol,
 * because each lets two parsers read one text differently:
 *
 * - duplicate keys: `JSON.parse` keeps the last, serde refuses the object;
 * - numbers: `JSON.parse` rounds integers beyond 2^53 and accepts `1.0` or `1e0` as 1, serde
 *   reads integers exactly and refuses fractions and exponents for integer fields;
 * - lone surrogate escapes (`"\ud800"`): `JSON.parse` accepts them, serde refuses them.
 *
 * Every number in every Sotto wire type is an unsigned integer, so this parser accepts only
 * non-negative integer literals and returns them as `bigint`; a fraction, an exponent or a minus
 * sign anywhere is a `Json` error, which is what serde reports for such a value in any field
 * (an unknown field is refused too). Objects are returned with a null prototype, so a key named
 * `__proto__` is an ordinary (and, for our types, unknown) field.
 */

import { ProtocolError } from './errors.js';

/** A parsed JSON value; numbers are non-negative integers. */
export type JsonValue = null | boolean | bigint | string | JsonValue[] | JsonObject;
/** A parsed JSON object (null prototype). */
export interface JsonObject {
  [key: string]: JsonValue;
}

/** Nesting deeper than this is refused, as serde_json does (its recursion limit is 128). */
const MAX_DEPTH = 128;

const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/** Parses `text` strictly; any deviation is a `Json` error. */
export function parseStrictJson(text: string): JsonValue {
  const parser = new Parser(text);
  parser.skipWhitespace();
  const value = parser.value(0);
  parser.skipWhitespace();
  if (!parser.atEnd()) parser.fail('trailing characters');
  return value;
}

class Parser {
  private position = 0;

  constructor(private readonly text: string) {}

  fail(reason: string): never {
    throw new ProtocolError('Json', `${reason} at offset ${this.position}`);
  }

  atEnd(): boolean {
    return this.position >= this.text.length;
  }

  skipWhitespace(): void {
    while (!this.atEnd()) {
      const c = this.text.charCodeAt(this.position);
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return;
      this.position++;
    }
  }

  value(depth: number): JsonValue {
    if (depth > MAX_DEPTH) this.fail('nested too deeply');
    const c = this.text[this.position];
    switch (c) {
      case '{':
        return this.object(depth);
      case '[':
        return this.array(depth);
      case '"':
        return this.string();
      case 't':
        return this.literal('true', true);
      case 'f':
        return this.literal('false', false);
      case 'n':
        return this.literal('null', null);
      default:
        if (c !== undefined && c >= '0' && c <= '9') return this.integer();
        return this.fail(c === '-' ? 'negative numbers are not used' : 'expected a value');
    }
  }

  private literal<T extends JsonValue>(word: string, value: T): T {
    if (!this.text.startsWith(word, this.position)) this.fail('expected a value');
    this.position += word.length;
    return value;
  }

  private integer(): bigint {
    const match = /^(0|[1-9][0-9]*)/.exec(this.text.slice(this.position, this.position + 400));
    if (match === null) return this.fail('expected a number');
    this.position += match[0].length;
    const next = this.text[this.position];
    if (next === '.' || next === 'e' || next === 'E') this.fail('only integers are used');
    if (next !== undefined && next >= '0' && next <= '9') this.fail('invalid number');
    return BigInt(match[0]);
  }

  private string(): string {
    const start = this.position;
    this.position++; // opening quote
    for (;;) {
      if (this.atEnd()) this.fail('unterminated string');
      const c = this.text.charCodeAt(this.position);
      if (c === 0x22) break;
      if (c < 0x20) this.fail('control character in string');
      if (c === 0x5c) {
        const escape = this.text[this.position + 1];
        if (escape === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(this.text.slice(this.position + 2, this.position + 6))) this.fail('bad \\u escape');
          this.position += 6;
          continue;
        }
        if (escape === undefined || !'"\\/bfnrt'.includes(escape)) this.fail('bad escape');
        this.position += 2;
        continue;
      }
      this.position++;
    }
    this.position++; // closing quote
    // The slice is a well-formed JSON string literal now; let the engine decode its escapes.
    const decoded = JSON.parse(this.text.slice(start, this.position)) as string;
    if (LONE_SURROGATE.test(decoded)) this.fail('lone surrogate in string');
    return decoded;
  }

  private array(depth: number): JsonValue[] {
    this.position++;
    const items: JsonValue[] = [];
    this.skipWhitespace();
    if (this.text[this.position] === ']') {
      this.position++;
      return items;
    }
    for (;;) {
      this.skipWhitespace();
      items.push(this.value(depth + 1));
      this.skipWhitespace();
      const c = this.text[this.position];
      this.position++;
      if (c === ']') return items;
      if (c !== ',') this.fail('expected , or ]');
    }
  }

  private object(depth: number): JsonObject {
    this.position++;
    const object = Object.create(null) as JsonObject;
    this.skipWhitespace();
    if (this.text[this.position] === '}') {
      this.position++;
      return object;
    }
    for (;;) {
      this.skipWhitespace();
      if (this.text[this.position] !== '"') this.fail('expected a key');
      const key = this.string();
      if (Object.prototype.hasOwnProperty.call(object, key)) this.fail('duplicate key');
      this.skipWhitespace();
      if (this.text[this.position] !== ':') this.fail('expected :');
      this.position++;
      this.skipWhitespace();
      object[key] = this.value(depth + 1);
      this.skipWhitespace();
      const c = this.text[this.position];
      this.position++;
      if (c === '}') return object;
      if (c !== ',') this.fail('expected , or }');
    }
  }
}
