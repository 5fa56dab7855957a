-- emit: acknowledge answered image entries and publish each result only if its XACK succeeded,
-- so an entry answered twice (a claimed-over retry) publishes one result, not two.
-- KEYS[1]  images stream   <prefix>:images
-- KEYS[2]  results stream  <prefix>:results
-- ARGV[1]  group           the detectors' consumer group
-- ARGV[2]  delete_acked    "1": XDEL the image entry once acked (it holds the image bytes)
-- ARGV[3..] pairs          entry id, packed result; repeated
-- return   array with 1 (acked and published) or 0 (already acked elsewhere) per pair
local out = {}
for i = 3, #ARGV, 2 do
  local acked = redis.call("XACK", KEYS[1], ARGV[1], ARGV[i])
  if acked == 1 then
    redis.call("XADD", KEYS[2], "*", "result", ARGV[i + 1])
    if ARGV[2] == "1" then
      redis.call("XDEL", KEYS[1], ARGV[i])
    end
  end
  out[#out + 1] = acked
end
return out
