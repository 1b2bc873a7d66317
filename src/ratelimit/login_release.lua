-- Gives back an attempt reserved by login_reserve.lua (the password was
-- right). DECR keeps the key's expiry; a counter that has already expired
-- is left alone rather than recreated below zero without one.
local n = tonumber(redis.call('GET', KEYS[1]))
if n and n > 0 then
  redis.call('DECR', KEYS[1])
end
return 0
