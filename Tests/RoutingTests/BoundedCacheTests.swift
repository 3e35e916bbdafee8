import HeraldModel
import Testing

@Suite("A bounded cache of two generations (pure logic)")
struct BoundedCacheTests {
    @Test("never more than its limit, however many keys come")
    func bounded() {
        let cache = BoundedCache<Int, Int>(limit: 100)
        for key in 0..<10_000 { cache.put(key, key) }
        #expect(cache.count <= 100)
        #expect(cache.get(9_999) == 9_999, "the newest is kept")
    }

    @Test("what is asked for again survives a flood of keys asked for once; what is not is dropped")
    func hotKeysSurvive() {
        let cache = BoundedCache<Int, String>(limit: 100)
        cache.put(-1, "hot")
        cache.put(-2, "cold")
        // Many times the limit of keys seen once, the hot one asked for now and then.
        for key in 0..<2_000 {
            cache.put(key, "\(key)")
            if key % 25 == 0 { #expect(cache.get(-1) == "hot", "asked for at \(key)") }
        }
        #expect(cache.get(-1) == "hot")
        #expect(cache.get(-2) == nil, "never asked for again: gone")
        #expect(cache.get(0) == nil)
    }

    @Test("peek finds both generations and moves nothing; a key put again into a full generation does not turn it over")
    func peekAndRefill() {
        let cache = BoundedCache<String, Int>(limit: 4)
        cache.put("a", 1)
        cache.put("b", 2)
        cache.put("c", 3)  // "a" and "b" are the previous generation now
        #expect(cache.peek("a") == 1)
        cache.put("d", 4)  // the current generation ("c", "d") is full
        cache.put("d", 40)  // already in it: no turn-over
        #expect(cache.peek("a") == 1, "still there: peeking moved nothing and the refill turned nothing over")
        #expect(cache.peek("d") == 40)
        cache.put("e", 5)  // now it turns over: "a" and "b" go
        #expect(cache.peek("a") == nil)
        #expect(cache.peek("c") == 3)
    }

    @Test("a key put again takes its new value")
    func replaced() {
        let cache = BoundedCache<String, Int>(limit: 4)
        cache.put("a", 1)
        cache.put("b", 2)
        cache.put("c", 3)  // "a" and "b" are the previous generation now
        cache.put("a", 10)
        #expect(cache.get("a") == 10)
        #expect(cache.get("b") == 2)
    }
}
