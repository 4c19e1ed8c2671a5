/**
 * Automatic prefix caching (vLLM's automatic prefix caching; SGLang's radix cache): full KV
 * pages are kept after their sequence ends, keyed by the tokens they hold AND every token
 * before them (a hash chain: key(page i) = sha1(key(page i − 1), tokens of page i)), shared
 * read-only by later sequences whose prompt starts with the same tokens, and evicted least
 * recently used when the cache runs short of pages.
 *
 * Ownership: a page is either held by one running sequence (its own, writable pages), or by
 * this cache (an entry; sequences that matched it hold a pin, `refs`, and never write it).
 * Only whole pages are cached, so a sequence that matched k pages writes its new tokens into
 * pages of its own. An entry is evicted only when no sequence pins it and no cached entry
 * continues it (leaves first: a chain never loses a middle link).
 */
import { createHash } from 'node:crypto';
import type { KvCache } from '../kv-cache';

interface Entry {
  key: string;
  parent: Entry | null;
  page: number;
  /** Running sequences that matched this page. */
  refs: number;
  /** Cached entries whose parent this is. */
  children: number;
  lastUse: number;
}

export interface PrefixCacheStats {
  /** Pages held by the cache (not by running sequences). */
  pages: number;
  /** Prompt tokens looked up, and how many of them were found cached. */
  queriedTokens: number;
  hitTokens: number;
  /** hitTokens / queriedTokens (0 before any lookup). */
  hitRate: number;
  evictedPages: number;
}

/** A match: the cached pages a sequence may start from (pinned until release()). */
export interface PrefixMatch {
  pages: number[];
  tokens: number;
  entries: readonly unknown[];
}

export class PrefixCache {
  readonly #cache: KvCache;
  readonly #page: number;
  readonly #entries = new Map<string, Entry>();
  #clock = 0;
  #queried = 0;
  #hits = 0;
  #evicted = 0;

  constructor(cache: KvCache) {
    this.#cache = cache;
    this.#page = cache.pageSize;
  }

  #key(parent: Entry | null, tokens: ArrayLike<number>, from: number): string {
    const h = createHash('sha1');
    h.update(parent?.key ?? 'root');
    h.update(new Uint8Array(Int32Array.from({ length: this.#page }, (_, i) => tokens[from + i]).buffer));
    return h.digest('hex');
  }

  /**
   * The longest chain of cached pages that starts `tokens`, covering at most `maxTokens` of them
   * (a caller that must compute at least one token passes tokens.length − 1). Pins what it
   * returns; give it back with release().
   */
  match(tokens: ArrayLike<number>, maxTokens: number): PrefixMatch {
    const found: Entry[] = [];
    let parent: Entry | null = null;
    for (let p = 0; (p + 1) * this.#page <= Math.min(maxTokens, tokens.length); p++) {
      const e = this.#entries.get(this.#key(parent, tokens, p * this.#page));
      if (!e) break;
      found.push(e);
      parent = e;
    }
    const now = ++this.#clock;
    for (const e of found) {
      e.refs++;
      e.lastUse = now;
    }
    this.#queried += tokens.length;
    this.#hits += found.length * this.#page;
    return { pages: found.map((e) => e.page), tokens: found.length * this.#page, entries: found };
  }

  /** Unpins a match's pages (they stay cached). */
  release(m: PrefixMatch): void {
    for (const e of m.entries as Entry[]) e.refs--;
  }

  /**
   * A sequence ends: `pages` hold its first `length` tokens of `tokens` (the first
   * `m.tokens` of them in the matched, cached pages). Its full pages join the cache (unless an
   * equal page is cached already); the match is released. Returns the pages the caller must
   * free (the partial last page, duplicates).
   */
  finish(tokens: ArrayLike<number>, pages: readonly number[], length: number, m: PrefixMatch | null): number[] {
    const matched = m ? (m.entries as Entry[]) : [];
    if (m) this.release(m);
    let parent: Entry | null = matched.length ? matched[matched.length - 1] : null;
    const full = Math.floor(Math.min(length, tokens.length) / this.#page);
    const free: number[] = [];
    const now = ++this.#clock;
    for (let p = matched.length; p < pages.length; p++) {
      if (p >= full) {
        free.push(pages[p]);
        continue;
      }
      const key = this.#key(parent, tokens, p * this.#page);
      let e = this.#entries.get(key);
      if (e) {
        free.push(pages[p]); // another sequence cached the same page first
      } else {
        e = { key, parent, page: pages[p], refs: 0, children: 0, lastUse: now };
        this.#entries.set(key, e);
        if (parent) parent.children++;
      }
      e.lastUse = now;
      parent = e;
    }
    return free;
  }

  /**
   * Frees up to `n` cached pages back to the KV cache: least recently used first, among
   * entries no sequence pins and no cached entry continues. Returns how many were freed.
   */
  evict(n: number): number {
    let freed = 0;
    while (freed < n) {
      let victim: Entry | null = null;
      for (const e of this.#entries.values()) {
        if (e.refs === 0 && e.children === 0 && (!victim || e.lastUse < victim.lastUse)) victim = e;
      }
      if (!victim) break;
      this.#entries.delete(victim.key);
      if (victim.parent) victim.parent.children--;
      this.#cache.freePages([victim.page]);
      freed++;
      this.#evicted++;
    }
    return freed;
  }

  /** Frees every cached page no sequence pins. */
  clear(): void {
    this.evict(Infinity);
  }

  stats(): PrefixCacheStats {
    return {
      pages: this.#entries.size, queriedTokens: this.#queried, hitTokens: this.#hits,
      hitRate: this.#queried ? this.#hits / this.#queried : 0, evictedPages: this.#evicted,
    };
  }
}
