-- bloom_add: add items to a bitmap Bloom filter (fallback when BF.* is absent).
-- KEYS[1]  bitmap          <prefix>:bloom:<model>:<generation>
-- ARGV[1]  k               offsets per item
-- ARGV[2]  ttl_ms          set on the bitmap when it has none yet (generations expire)
-- ARGV[3..] offsets        k per item, items one after another
-- return   number of items that were not present before
local k = tonumber(ARGV[1])
local added = 0
for i = 3, #ARGV, k do
  local new = 0
  for j = i, i + k - 1 do
    if redis.call("SETBIT", KEYS[1], ARGV[j], 1) == 0 then
      new = 1
    end
  end
  added = added + new
end
if redis.call("PTTL", KEYS[1]) == -1 then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return added
