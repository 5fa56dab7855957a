-- lookup_or_lock: read an (image, model) cache entry, or take the single-flight lock for it.
-- The entry's fields: common/cache/entry.py. Called through common/cache/lookup.py.
-- Cache and lock share the {sha256} hash tag, so this stays one slot on a cluster.
-- KEYS[1]  cache hash    <prefix>:face:{<sha256>}:<model>
-- KEYS[2]  lock string   <prefix>:lock:{<sha256>}:<model>
-- KEYS[3..4]             with check_cache "bloom" only (one server: other slots): the Bloom
--                        filter's current and previous generation <prefix>:bloom:<model>:<gen>
-- ARGV[1]  token         random token of the caller, starting with its owner prefix
-- ARGV[2]  ttl_ms        lock time to live
-- ARGV[3]  check_cache   "1": read the cache first; "0": the Bloom filter said never seen, so
--                        skip the read, and only once the lock is ours confirm that no result
--                        landed since the Bloom check (else a second inference could start);
--                        "bloom": ask the filter here first, then as "1" or "0"
-- ARGV[4]  owner         the caller process's token prefix: a lock it left behind (its write
--                        failed mid-outage) is taken back at once instead of waiting out the TTL
-- ARGV[5..] with "bloom" the filter's mode ("native", "lua" or "off"), the sha256 (native),
--                        then its bitmap offsets (lua)
-- return   {1, faces, width, height, model, created_ms}  cache hit
--          {2}                                            lock taken by the caller
--          {3, pttl_ms}                                   lock held by another worker
--          with "bloom", the filter's answer appended: 1 maybe cached, 0 never
local check, maybe = ARGV[3], nil
if check == "bloom" then
  local mode = ARGV[5]
  maybe = mode == "off" and 1 or 0
  for g = 3, 4 do
    if maybe == 1 then
      break
    end
    if mode == "native" then
      maybe = redis.call("BF.EXISTS", KEYS[g], ARGV[6])
    else
      maybe = 1
      for j = 7, #ARGV do
        if redis.call("GETBIT", KEYS[g], ARGV[j]) == 0 then
          maybe = 0
          break
        end
      end
    end
  end
  check = maybe == 1 and "1" or "0"
end

local function answer(reply)
  if maybe ~= nil then
    reply[#reply + 1] = maybe
  end
  return reply
end

local fields = {"faces", "width", "height", "model", "created_ms"}
if check == "1" then
  local hit = redis.call("HMGET", KEYS[1], unpack(fields))
  if hit[1] then
    return answer({1, hit[1], hit[2], hit[3], hit[4], hit[5]})
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
  if check == "0" and redis.call("EXISTS", KEYS[1]) == 1 then
    redis.call("DEL", KEYS[2])
    local hit = redis.call("HMGET", KEYS[1], unpack(fields))
    return answer({1, hit[1], hit[2], hit[3], hit[4], hit[5]})
  end
  return answer({2})
end
return answer({3, redis.call("PTTL", KEYS[2])})
