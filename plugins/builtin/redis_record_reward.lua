-- Record a reward once (HSETNX on (event, item)) and, only when it is new, add every
-- per-item statistic (HINCRBYFLOAT) and note the reward in this replica's pending hash when
-- it has array deltas to flush later.
-- KEYS: rewards hash, pending hash, then (items hash, version key) per learner with items.
-- ARGV: item_id, reward json, ttl, pending ref ('' when no arrays), pending value,
--       n learners, then per learner: n fields, (field, increment) pairs.
-- Returns 1 (recorded), 0 (duplicate) or 2 (duplicate whose array deltas are still pending).
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then return 2 end
  return 0
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[4], ARGV[5]) end
local a = 7
for i = 1, tonumber(ARGV[6]) do
  local m = tonumber(ARGV[a]); a = a + 1
  for j = 1, m do
    redis.call('HINCRBYFLOAT', KEYS[1 + 2 * i], ARGV[a], ARGV[a + 1]); a = a + 2
  end
  redis.call('INCR', KEYS[2 + 2 * i])
end
return 1
