-- lock_extend: push a lock's expiry out only if the caller still owns it.
-- KEYS[1]  lock string
-- ARGV[1]  token
-- ARGV[2]  ttl_ms        new time to live from now
-- return   1 extended, 0 not the owner (the lock expired; another worker may redo the work)
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
