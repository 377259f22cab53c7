--[[
redeem.lua: an operator marks a ticket used, once.

The caller has already checked the ticket's verification data against the record it read;
this script makes the state change atomic, so of two concurrent redeems exactly one wins.

KEYS[1]  tickets  HASH    code -> "user|claim_id|status|claimed_at_ms|type"
KEYS[2]  log      STREAM  claim log (a `redeem` event is appended for the drain)
KEYS[3]  metrics  HASH    the activity's counters for /metrics: redeemed:<type> (optional)

ARGV[1]  code (the part after "<activity>-")
ARGV[2]  activity id
ARGV[3]  now, ms since the epoch

Returns a flat array:
  { 1, user, claim_id }   redeemed now
  { -1 }                  no such ticket
  { -12, status }         the ticket is not active (already redeemed, or returned)
--]]

local tickets, log = KEYS[1], KEYS[2]
local code = ARGV[1]

local record = redis.call('HGET', tickets, code)
if not record then
  return { -1 }
end
local owner, claim_id, status, rest = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
if not owner then
  return { -1 }
end
if status ~= 'active' then
  return { -12, status }
end

-- rest: claimed_at and type, kept as they are.
redis.call('HSET', tickets, code, owner .. '|' .. claim_id .. '|redeemed|' .. rest)
if KEYS[3] then
  -- Written before ticket types, a record ends at claimed_at: the type is `default`.
  local ty = string.match(rest, '^[^|]*|(.*)$') or 'default'
  redis.call('HINCRBY', KEYS[3], 'redeemed:' .. ty, 1)
end
redis.call('XADD', log, '*', 'e', cjson.encode({
  t = 'redeem', claim = claim_id, activity = ARGV[2], user = owner, code = code, at = ARGV[3],
}))
return { 1, owner, claim_id }
