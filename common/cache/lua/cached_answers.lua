-- cached_answers: the gateway's look-up for a batch of requests, in one step on one server:
-- per request, the Bloom filter first (the current and the previous generation), then, where
-- it says "maybe", the cache entry; a hit whose request sent a result head is also added to the
-- results stream here, so a hit costs the gateway one round trip. (On a cluster the filter, the
-- cache entries and the streams live in different slots: the gateway runs look-up and XADD as
-- ordered round trips instead.)
-- KEYS[1]  Bloom filter, current generation   <prefix>:bloom:<model>:<generation>
-- KEYS[2]  Bloom filter, previous generation
-- KEYS[3..2+n]    cache hashes, one per request   <prefix>:face:{<sha256>}:<model>
-- KEYS[3+n..2+2n] results streams, one per request (where its hit goes)
-- ARGV[1]  mode           "native" (BF.EXISTS), "lua" (bitmap offsets) or "off" (no filter)
-- ARGV[2]  k              offsets per request in "lua" mode (0 otherwise)
-- ARGV[3]  n              requests
-- ARGV[4..] per request   its sha256, its result head, then its k offsets. The head is the
--          msgpack map of the request's result without width, height and faces, its header
--          counting those three, made by common/cache/entry.py `result_head` (which says why
--          the splice reads as one map); "" publishes nothing.
-- return   per request: {0} never seen; {2} maybe, not cached; {1, published (1 or 0), faces,
--          width, height} cached (a missing size as ""). An entry without a size (imported from
--          the old design) is returned, never published: the detector answers those.
local mode, k, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = {"faces", "width", "height"}

local function in_bitmap(key, first)
  for j = first, first + k - 1 do
    if redis.call("GETBIT", key, ARGV[j]) == 0 then
      return false
    end
  end
  return true
end

local function maybe(sha, first)
  if mode == "off" then
    return true
  end
  for g = 1, 2 do
    if mode == "native" then
      if redis.call("BF.EXISTS", KEYS[g], sha) == 1 then
        return true
      end
    elseif in_bitmap(KEYS[g], first) then
      return true
    end
  end
  return false
end

-- A size is a positive integer in decimal digits, the one rule the gateway applies as well
-- (common/cache/entry.py `size_of`): an entry this script publishes is one the gateway
-- answers, never a miss.
local function sized(value)
  return value and string.match(value, "^%d+$") ~= nil and tonumber(value) > 0
end

local out = {}
local at = 4
for i = 1, n do
  local sha, head = ARGV[at], ARGV[at + 1]
  if not maybe(sha, at + 2) then
    out[i] = {0}
  else
    local hit = redis.call("HMGET", KEYS[2 + i], unpack(fields))
    if not hit[1] then
      out[i] = {2}
    else
      local published = 0
      if head ~= "" and sized(hit[2]) and sized(hit[3]) then
        -- The cached faces are already the packed list a result carries: appended as they are.
        local tail = cmsgpack.pack("width", tonumber(hit[2]), "height", tonumber(hit[3]), "faces")
        redis.call("XADD", KEYS[2 + n + i], "*", "result", head .. tail .. hit[1])
        published = 1
      end
      out[i] = {1, published, hit[1], hit[2] or "", hit[3] or ""}
    end
  end
  at = at + 2 + k
end
return out
