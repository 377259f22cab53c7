--[[
stocks.lua: the live stock of every ticket type of several activities (a page of the
listing) in one round trip.

KEYS[1..n]  stocks  HASH  one per activity: type -> tickets left

Returns a flat array, per key in order: { count, type_1, left_1, ..., type_count, left_count }
(count 0 for an activity not loaded into Redis).
--]]

local reply = {}
for _, key in ipairs(KEYS) do
  local pairs_ = redis.call('HGETALL', key)
  reply[#reply + 1] = #pairs_ / 2
  for _, v in ipairs(pairs_) do
    reply[#reply + 1] = v
  end
end
return reply
