-- GCRA (generic cell rate algorithm) for one key, atomically.
-- KEYS[1]  the limit's key; it holds the theoretical arrival time (TAT) of
--          the next request, in microseconds of Redis server time
-- ARGV[1]  emission interval: microseconds per request at the steady rate
-- ARGV[2]  burst: requests allowed at once from a rested key
-- Returns {1, 0} when the request is allowed (and counted), or
-- {0, ms} when it is refused: ms until one would be allowed. A refused
-- request is not counted, so waiting the given time always suffices.

-- Old Redis versions replicate scripts verbatim and refuse a write after
-- TIME unless effects replication is switched on (it is the default from 5).
if redis.replicate_commands then
  redis.replicate_commands()
end

-- Server time, not each node's clock: nodes whose clocks disagree still
-- agree on every key.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, math.ceil((allow_at - now) / 1000)}
end
-- The key expires when it would be rested anyway: an idle user costs nothing.
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
