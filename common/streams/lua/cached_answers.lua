-- cached_answers: the gateway's look-up for a batch of requests, in one step on one server:
-- per image, the Bloom filter first (the current and the previous generation), then, where it
-- says "maybe", the cache entry. Nothing is written. (On a cluster the filter and the cache
-- entries live in different slots: the gateway runs the two as ordered round trips instead.)
-- KEYS[1]  Bloom filter, current generation   <prefix>:bloom:<model>:<generation>
-- KEYS[2]  Bloom filter, previous generation
-- KEYS[3..] cache hashes, one per image       <prefix>:face:{<sha256>}:<model>
-- ARGV[1]  mode           "native" (BF.EXISTS), "lua" (bitmap offsets) or "off" (no filter)
-- ARGV[2]  k              offsets per image in "lua" mode (0 otherwise)
-- ARGV[3..] per image     its sha256, then its k offsets
-- return   per image: {0} never seen; {2} maybe, not cached; {1, faces, width, height,
--          model, created_ms} cached
local mode, k = ARGV[1], tonumber(ARGV[2])
local fields = {"faces", "width", "height", "model", "created_ms"}

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

local out = {}
local at = 3
for i = 3, #KEYS do
  local sha = ARGV[at]
  if not maybe(sha, at + 1) then
    out[#out + 1] = {0}
  else
    local hit = redis.call("HMGET", KEYS[i], unpack(fields))
    if hit[1] then
      out[#out + 1] = {1, hit[1], hit[2], hit[3], hit[4], hit[5]}
    else
      out[#out + 1] = {2}
    end
  end
  at = at + 1 + k
end
return out
