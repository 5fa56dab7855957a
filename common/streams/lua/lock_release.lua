-- lock_release: delete a lock only if the caller still owns it (its token is stored).
-- KEYS[1]  lock string   <prefix>:lock:{<sha256>}:<model> (or any token lock)
-- ARGV[1]  token
-- return   1 released, 0 not the owner (expired or taken over)
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
