--[[
metrics.lua: what /metrics shows of one activity, in one round trip (read only).

KEYS[1]  meta     HASH    status, ends_at, types (see publish.lua)
KEYS[2]  stocks   HASH    type -> tickets left
KEYS[3]  metrics  HASH    the activity's counters (claim.lua, return.lua, redeem.lua, pass.lua)
KEYS[4]  passes   STRING  claim passes handed out
KEYS[5]  log      STREAM  the claim log (entries not yet in Postgres)

Returns a flat array:
  { status, ends_at_ms, types, passes, log_length, oldest_entry_id, 2n,
    type_1, left_1, ..., type_n, left_n, field_1, value_1, ... }
with '' for what is missing (an activity not loaded, an empty log).
--]]

local m = redis.call('HMGET', KEYS[1], 'status', 'ends_at', 'types')
local oldest = redis.call('XRANGE', KEYS[5], '-', '+', 'COUNT', 1)
local reply = {
  m[1] or '', m[2] or '', m[3] or '', redis.call('GET', KEYS[4]) or '0',
  redis.call('XLEN', KEYS[5]), (oldest[1] and oldest[1][1]) or '',
}
local stocks = redis.call('HGETALL', KEYS[2])
reply[#reply + 1] = #stocks
for _, v in ipairs(stocks) do
  reply[#reply + 1] = v
end
for _, v in ipairs(redis.call('HGETALL', KEYS[3])) do
  reply[#reply + 1] = v
end
return reply
