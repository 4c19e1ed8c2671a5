/**
 * Seeded PRNG for test data: mulberry32 (32-bit state, period 2^32), seeded from a case
 * record by hashing its JSON with FNV-1a, so every case draws the same data on every run.
 */

// Globals used in hot loops are aliased at module scope: under jest every global lookup
// (Math.x, Number.x) goes through the vm context's global interceptor, ~40x slower.
const math = Math;

/** FNV-1a 32-bit hash of a string. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export class Rng {
  private state: number;
  private spare: number | null = null;

  /** Seed with a number, or with any JSON-able value (a case record), hashed. */
  constructor(seed: number | string | object) {
    const s = typeof seed === 'number' ? seed : hashString(typeof seed === 'string' ? seed : JSON.stringify(seed));
    this.state = s >>> 0;
  }

  /** Next uint32 (mulberry32). */
  nextU32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  next(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform in [lo, hi). */
  uniform(lo = 0, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }

  /** Integer uniform in [lo, hi) (hi - lo <= 2^32). */
  int(lo: number, hi: number): number {
    return lo + math.floor(this.next() * (hi - lo));
  }

  /** Standard normal via Box-Muller (pairs cached), scaled: mean + std * N(0,1). */
  normal(mean = 0, std = 1): number {
    let z: number;
    if (this.spare !== null) {
      z = this.spare;
      this.spare = null;
    } else {
      let u = 0;
      while (u === 0) u = this.next();
      const v = this.next();
      const r = math.sqrt(-2 * math.log(u));
      z = r * math.cos(2 * math.PI * v);
      this.spare = r * math.sin(2 * math.PI * v);
    }
    return mean + std * z;
  }

  /** n normals rounded to f32 (the values a Float32Array will hold). */
  normalF32(n: number, std = 1, mean = 0): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal(mean, std);
    return out;
  }

  /** n uniforms in [lo, hi) rounded to f32. */
  uniformF32(n: number, lo = 0, hi = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.uniform(lo, hi);
    return out;
  }

  /** n integers in [lo, hi). */
  ints(n: number, lo: number, hi: number): number[] {
    const out: number[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(lo, hi);
    return out;
  }
}
