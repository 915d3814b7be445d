-- Append one replica's summed array deltas and forget the rewards they cover, atomically.
-- KEYS: pending hash, then (deltas list, arrays set, version key) per array.
-- ARGV: n refs, refs..., n arrays, then (array name, float64 blob) pairs.
-- All-or-nothing and idempotent: if any ref is gone, the deltas were applied already.
local n = tonumber(ARGV[1])
for i = 1, n do
  if redis.call('HEXISTS', KEYS[1], ARGV[1 + i]) == 0 then return 0 end
end
for i = 1, n do redis.call('HDEL', KEYS[1], ARGV[1 + i]) end
local a = n + 3
for j = 1, tonumber(ARGV[n + 2]) do
  local k = 2 + 3 * (j - 1)
  redis.call('RPUSH', KEYS[k], ARGV[a + 1])
  redis.call('SADD', KEYS[k + 1], ARGV[a])
  redis.call('INCR', KEYS[k + 2])
  a = a + 2
end
return 1
