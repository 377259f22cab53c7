--[[
lend.lua: one stock bucket of an activity lends stock of a type to another bucket, the home
of a claim that found too little there (flashclaim_core::buckets). The stock leaves this
bucket here; the home credits it inside its next claim script (claim.lua's ARGV[23]), or,
if that never runs, credit.lua does when the drain finds the loan still open here.

KEYS[1]  meta     HASH    this bucket's copy of the activity's settings (status)
KEYS[2]  stocks   HASH    type -> tickets left in this bucket
KEYS[3]  bucket   HASH    this bucket's state: out:<move> -> "home|type|amount|at_ms", a
                          loan not yet known credited

ARGV[1]  type key
ARGV[2]  tickets wanted (>= 1)
ARGV[3]  move id (unique, chosen by the caller)
ARGV[4]  the borrowing (home) bucket's number
ARGV[5]  now, ms since the epoch

Returns { lent }: 0 .. ARGV[2] tickets, all this bucket had up to what was wanted (0 for an
activity not open to claims).
--]]

local meta, stocks, bucket_state = KEYS[1], KEYS[2], KEYS[3]
local ty, wanted = ARGV[1], tonumber(ARGV[2])
if redis.call('HGET', meta, 'status') ~= 'published' then
  return { 0 }
end
local left = tonumber(redis.call('HGET', stocks, ty) or '0')
local lent = math.min(left, wanted)
if lent <= 0 then
  return { 0 }
end
redis.call('HINCRBY', stocks, ty, -lent)
redis.call('HSET', bucket_state, 'out:' .. ARGV[3], ARGV[4] .. '|' .. ty .. '|' .. lent .. '|' .. ARGV[5])
return { lent }
