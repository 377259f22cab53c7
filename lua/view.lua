--[[
view.lua: an activity's public page in one round trip: the cached view, the live stock of
every ticket type and, for a signed-in caller, what they hold.

KEYS[1]  view     STRING  cached public JSON of the activity, or the not-found marker
KEYS[2]  stocks   HASH    type -> tickets left
KEYS[3]  claimed  HASH    user -> tickets held over all types; "user|type" -> of one type

ARGV[1]  user id of the caller; empty: anonymous

Returns a flat array:
  { view, n, type_1, left_1, ..., type_n, left_n }                   anonymous
  { view, n, type_1, left_1, ..., held_total, held_1, ..., held_n }  with a user
  view is nil when nothing is cached (the caller rebuilds it and asks again)
--]]

local view, stocks, claimed = KEYS[1], KEYS[2], KEYS[3]
local user = ARGV[1]

local cached = redis.call('GET', view)
if not cached then
  return { false }
end
local pairs_ = redis.call('HGETALL', stocks)
local reply = { cached, #pairs_ / 2 }
for _, v in ipairs(pairs_) do
  reply[#reply + 1] = v
end
if user ~= '' then
  local fields = { user }
  for i = 1, #pairs_, 2 do
    fields[#fields + 1] = user .. '|' .. pairs_[i]
  end
  for _, held in ipairs(redis.call('HMGET', claimed, unpack(fields))) do
    reply[#reply + 1] = tonumber(held or '0')
  end
end
return reply
