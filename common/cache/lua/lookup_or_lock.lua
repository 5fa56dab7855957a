-- lookup_or_lock: read an (image, model) cache entry, or take the single-flight lock for it.
-- The entry's fields: common/cache/entry.py. Called through common/cache/lookup.py.
-- Cache and lock share the {sha256} hash tag, so this stays one slot on a cluster.
-- KEYS[1]  cache hash    <prefix>:face:{<sha256>}:<model>
-- KEYS[2]  lock string   <prefix>:lock:{<sha256>}:<model>
-- ARGV[1]  token         random token of the caller, starting with its owner prefix
-- ARGV[2]  ttl_ms        lock time to live
-- ARGV[3]  check_cache   "1": read the cache first; "0": the Bloom filter said never seen, so
--                        skip the read, and only once the lock is ours confirm that no result
--                        landed since the Bloom check (else a second inference could start)
-- ARGV[4]  owner         the caller process's token prefix: a lock it left behind (its write
--                        failed mid-outage) is taken back at once instead of waiting out the TTL
-- return   {1, faces, width, height, model, created_ms}  cache hit
--          {2}                                            lock taken by the caller
--          {3, pttl_ms}                                   lock held by another worker
local fields = {"faces", "width", "height", "model", "created_ms"}
if ARGV[3] == "1" then
  local hit = redis.call("HMGET", KEYS[1], unpack(fields))
  if hit[1] then
    return {1, hit[1], hit[2], hit[3], hit[4], hit[5]}
  end
end
local acquired = redis.call("SET", KEYS[2], ARGV[1], "NX", "PX", ARGV[2])
if not acquired then
  local holder = redis.call("GET", KEYS[2])
  if holder and string.sub(holder, 1, #ARGV[4]) == ARGV[4] then
    redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2])
    acquired = true
  end
end
if acquired then
  if ARGV[3] == "0" and redis.call("EXISTS", KEYS[1]) == 1 then
    redis.call("DEL", KEYS[2])
    local hit = redis.call("HMGET", KEYS[1], unpack(fields))
    return {1, hit[1], hit[2], hit[3], hit[4], hit[5]}
  end
  return {2}
end
return {3, redis.call("PTTL", KEYS[2])}
