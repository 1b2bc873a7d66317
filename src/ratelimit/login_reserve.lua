-- Reserves one login attempt against a username's failure budget.
-- KEYS[1]  the username's counter of failed attempts in the current window
-- ARGV[1]  failures allowed per window
-- ARGV[2]  window length, milliseconds (counted from the first failure)
-- Returns {1, 0} when the attempt may go ahead (it is counted as a failure
-- until the caller gives it back), or {0, ms}: the budget is spent, and ms
-- is the time until the window ends.
-- Counting before the password is checked is what makes the limit hold
-- under concurrency: parallel guesses cannot all pass a check-then-count.
local n = tonumber(redis.call('GET', KEYS[1])) or 0
if n >= tonumber(ARGV[1]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    -- A counter without expiry would lock the name forever; never let it.
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    ttl = tonumber(ARGV[2])
  end
  return {0, ttl}
end
if redis.call('INCR', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, 0}
