-- sink_dead_letter: a sink gives up on results-stream entries: acknowledge each and copy it
-- to the dead-letter stream with the reason, in one step, only if the acknowledgement counted
-- (an entry another member already settled is not dead-lettered twice).
-- KEYS[1]  results stream      <prefix>:results (or a partition's)
-- KEYS[2]  dead-letter stream  <prefix>:dlq (the same partition's: one slot)
-- ARGV[1]  group               the sink's consumer group
-- ARGV[2]  sink                the sink kind
-- ARGV[3]  consumer            the member giving up
-- ARGV[4..] triples            entry id, result payload, reason; repeated
-- return   array with 1 (dead-lettered) or 0 (already acknowledged) per triple
local out = {}
for i = 4, #ARGV, 3 do
  local acked = redis.call("XACK", KEYS[1], ARGV[1], ARGV[i])
  if acked == 1 then
    redis.call("XADD", KEYS[2], "*", "result", ARGV[i + 1], "reason", ARGV[i + 2],
               "sink", ARGV[2], "group", ARGV[1], "consumer", ARGV[3], "entry", ARGV[i])
  end
  out[#out + 1] = acked
end
return out
