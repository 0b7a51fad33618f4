/** The LRU behind the view's directory fd, listing and name caches. */
import { Lru } from '../../src/store/handles';

function lru(capacity: number) {
  const evicted: string[] = [];
  const cache = new Lru<string, string>(capacity, (v) => evicted.push(v));
  return { cache, evicted };
}

describe('Lru', () => {
  test('evicts the least recently used, a hit counting as a use', () => {
    const { cache, evicted } = lru(2);
    cache.set('a', 'A');
    cache.set('b', 'B');
    expect(cache.get('a')).toBe('A');
    cache.set('c', 'C');
    expect(evicted).toEqual(['B']);
    expect([cache.get('a'), cache.get('b'), cache.get('c')]).toEqual(['A', undefined, 'C']);
  });

  test('a run of hits on the newest key keeps the order, and a later hit on another key still moves it', () => {
    const { cache, evicted } = lru(3);
    for (const k of ['a', 'b', 'c']) cache.set(k, k.toUpperCase());
    for (let i = 0; i < 5; i++) expect(cache.get('c')).toBe('C');
    expect(cache.get('a')).toBe('A'); // now b, c, a
    expect(cache.get('a')).toBe('A');
    cache.set('d', 'D');
    expect(evicted).toEqual(['B']);
    cache.set('e', 'E');
    expect(evicted).toEqual(['B', 'C']);
  });

  test('setting a key again replaces and evicts the old value; clear evicts all and forgets the newest', () => {
    const { cache, evicted } = lru(2);
    cache.set('a', 'A1');
    cache.set('a', 'A2');
    expect(evicted).toEqual(['A1']);
    cache.set('b', 'B');
    cache.clear();
    expect(evicted.sort()).toEqual(['A1', 'A2', 'B']);
    expect(cache.size).toBe(0);
    expect(cache.get('b')).toBeUndefined();
    cache.set('a', 'A3');
    cache.set('b', 'B2');
    expect(cache.get('a')).toBe('A3'); // moved although 'b' was the newest before clear
    cache.set('c', 'C');
    expect(evicted.slice(3)).toEqual(['B2']);
  });
});
