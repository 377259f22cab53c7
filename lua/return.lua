--[[
return.lua: the owner of a ticket gives it back before the activity ends.

The ticket's stock goes back to its type (kind = counter), or its code goes back to the end
of the type's pool (kind = codes); the user's counts (over the activity and of the type)
drop by one so they may claim again, and a `return` event is appended to the claim log so
the drain marks the Postgres row returned.

KEYS[1]  meta     HASH    status, ends_at, id, <type>:kind (see claim.lua); gen, raised by
                          one (see publish.lua)
KEYS[2]  stocks   HASH    type -> tickets left
KEYS[3]  claimed  HASH    user -> tickets held over all types; "user|type" -> of one type
KEYS[4]  tickets  HASH    code -> "user|claim_id|status|claimed_at_ms|type" (no type: `default`)
KEYS[5]  log      STREAM  claim log
KEYS[6]  pools    HASH    per-type code queues (see claim.lua)
KEYS[7]  metrics  HASH    the activity's counters for /metrics: returned:<type> (optional)

ARGV[1]  code (the part after "<activity>-")
ARGV[2]  user id of the caller
ARGV[3]  now, ms since the epoch

Returns a flat array:
  { 1, stock_left, type, kind }  returned (stock_left, kind: of the ticket's type)
  { -1 }                   no such ticket, or not the caller's (never tell which)
  { -4 }                   the activity has ended or is closed
  { -12, status }          the ticket is no longer active (returned or redeemed)
--]]

local meta, stocks, claimed, tickets, log, pools = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local metrics = KEYS[7]
local code, user, now = ARGV[1], ARGV[2], tonumber(ARGV[3])

local record = redis.call('HGET', tickets, code)
if not record then
  return { -1 }
end
local owner, claim_id, status, claimed_at, ty = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
if not owner then
  -- Written before ticket types: the type is `default`.
  owner, claim_id, status, claimed_at = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  ty = 'default'
end
if owner ~= user then
  return { -1 }
end

local m = redis.call('HMGET', meta, 'status', 'ends_at', 'id', ty .. ':kind')
if m[1] ~= 'published' or now >= tonumber(m[2]) then
  return { -4 }
end
if status ~= 'active' then
  return { -12, status }
end

redis.call('HSET', tickets, code, owner .. '|' .. claim_id .. '|returned|' .. claimed_at .. '|' .. ty)
redis.call('HINCRBY', claimed, user, -1)
redis.call('HINCRBY', claimed, user .. '|' .. ty, -1)
-- The type has stock again: caches that learned it sold out must ask again.
redis.call('HINCRBY', meta, 'gen', 1)
if m[4] == 'codes' then
  local tail = redis.call('HINCRBY', pools, ty .. ':tail', 1)
  redis.call('HSET', pools, ty .. ':' .. (tail - 1), code)
end
local left = redis.call('HINCRBY', stocks, ty, 1)
if metrics then
  redis.call('HINCRBY', metrics, 'returned:' .. ty, 1)
end

redis.call('XADD', log, '*', 'e', cjson.encode({
  t = 'return', claim = claim_id, activity = m[3], user = user, code = code, at = ARGV[3],
}))
return { 1, left, ty, m[4] or 'counter' }
