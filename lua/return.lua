--[[
return.lua: the owner of a ticket gives it back before the activity ends.

The ticket's stock goes back (kind = counter) or its code goes back to the end of the
pool (kind = codes), the user's count drops by one so they may claim again, and a
`return` event is appended to the claim log so the drain marks the Postgres row returned.

KEYS[1]  meta     HASH    status, ends_at, kind, id (see claim.lua)
KEYS[2]  stock    STRING  tickets left
KEYS[3]  claimed  HASH    user -> tickets the user holds
KEYS[4]  tickets  HASH    code -> "user|claim_id|status|claimed_at_ms"
KEYS[5]  log      STREAM  claim log
KEYS[6]  pool     LIST    uploaded codes (kind = codes)

ARGV[1]  code (the part after "<activity>-")
ARGV[2]  user id of the caller
ARGV[3]  now, ms since the epoch

Returns a flat array:
  { 1, stock_left }     returned
  { -1 }                no such ticket, or not the caller's (never tell which)
  { -4 }                the activity has ended or is closed
  { -12, status }       the ticket is no longer active (returned or redeemed)
--]]

local meta, stock, claimed, tickets, log, pool = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local code, user, now = ARGV[1], ARGV[2], tonumber(ARGV[3])

local record = redis.call('HGET', tickets, code)
if not record then
  return { -1 }
end
local owner, claim_id, status, claimed_at = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
if owner ~= user then
  return { -1 }
end

local m = redis.call('HMGET', meta, 'status', 'ends_at', 'kind', 'id')
if m[1] ~= 'published' or now >= tonumber(m[2]) then
  return { -4 }
end
if status ~= 'active' then
  return { -12, status }
end

redis.call('HSET', tickets, code, owner .. '|' .. claim_id .. '|returned|' .. claimed_at)
redis.call('HINCRBY', claimed, user, -1)
local left
if m[3] == 'codes' then
  redis.call('RPUSH', pool, code)
  left = redis.call('INCR', stock)
else
  left = redis.call('INCR', stock)
end

redis.call('XADD', log, '*', 'e', cjson.encode({
  t = 'return', claim = claim_id, activity = m[4], user = user, code = code, at = ARGV[3],
}))
return { 1, left }
