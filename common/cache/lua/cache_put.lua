-- cache_put: store an inference result with its TTL and release the caller's lock, atomically,
-- so a waiter that finds the lock gone always finds the result.
-- KEYS[1]  cache hash    <prefix>:face:{<sha256>}:<model>
-- KEYS[2]  lock string   <prefix>:lock:{<sha256>}:<model>
-- ARGV[1]  token         the caller's lock token
-- ARGV[2]  ttl_ms        cache time to live
-- ARGV[3..7]             faces (msgpack), width, height, model, created_ms
-- return   1 when the caller still held the lock and released it, else 0
redis.call("HSET", KEYS[1], "faces", ARGV[3], "width", ARGV[4], "height", ARGV[5],
           "model", ARGV[6], "created_ms", ARGV[7])
redis.call("PEXPIRE", KEYS[1], ARGV[2])
if redis.call("GET", KEYS[2]) == ARGV[1] then
  redis.call("DEL", KEYS[2])
  return 1
end
return 0
