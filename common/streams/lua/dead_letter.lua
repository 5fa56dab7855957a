-- dead_letter: give up on entries delivered too often, in one step per entry: acknowledge it,
-- publish its `max_deliveries` error result, and copy the original event to the dead-letter
-- stream with the reason, the consumer and the delivery count (for `facestream ops dlq replay`).
-- Nothing happens for an entry that someone else acknowledged meanwhile.
-- KEYS[1]  images stream       <prefix>:images
-- KEYS[2]  results stream      <prefix>:results
-- KEYS[3]  dead-letter stream  <prefix>:dlq
-- ARGV[1]  group               the detectors' consumer group
-- ARGV[2]  delete_acked        "1": XDEL the image entry once acked
-- ARGV[3]  consumer            the member giving up
-- ARGV[4..] quads              entry id, packed result, event payload, delivery count
-- return   array with 1 (dead-lettered) or 0 (already acked elsewhere) per quad
local out = {}
for i = 4, #ARGV, 4 do
  local acked = redis.call("XACK", KEYS[1], ARGV[1], ARGV[i])
  if acked == 1 then
    redis.call("XADD", KEYS[2], "*", "result", ARGV[i + 1])
    redis.call("XADD", KEYS[3], "*", "event", ARGV[i + 2], "reason", "max_deliveries",
               "consumer", ARGV[3], "deliveries", ARGV[i + 3], "entry", ARGV[i],
               "stream", KEYS[1], "group", ARGV[1])
    if ARGV[2] == "1" then
      redis.call("XDEL", KEYS[1], ARGV[i])
    end
  end
  out[#out + 1] = acked
end
return out
