-- bloom_check: test items against a bitmap Bloom filter (fallback when BF.* is absent).
-- The bit offsets are computed by the caller from the item (double hashing of its sha256).
-- KEYS[1]  bitmap          <prefix>:bloom:<model>:<generation>
-- ARGV[1]  k               offsets per item
-- ARGV[2..] offsets        k per item, items one after another
-- return   array with 1 (maybe present) or 0 (certainly absent) per item
local k = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, k do
  local present = 1
  for j = i, i + k - 1 do
    if redis.call("GETBIT", KEYS[1], ARGV[j]) == 0 then
      present = 0
      break
    end
  end
  out[#out + 1] = present
end
return out
