-- Log a Rank event once: SET NX with a TTL, and index it by time.
-- KEYS: event key, events sorted set. ARGV: payload, created_at, ttl, event id.
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  local ttl = tonumber(ARGV[3])
  if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
  return 1
end
return 0
