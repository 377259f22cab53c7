--[[
pass.lua: hand a user the claim pass an activity with require_pass needs.

At most stock_total x factor passes are handed out per activity, one per user; the claim
script turns a pass from "issued" into "used", so each pass works once.

KEYS[1]  meta     HASH    status, ends_at, require_pass, stock_total (see publish.lua)
KEYS[2]  passes   STRING  passes handed out so far
KEYS[3]  pass     STRING  this user's pass: "issued" | "used"
KEYS[4]  client   HASH    the client address's token bucket on this activity (claim.lua's)
KEYS[5]  metrics  HASH    the activity's counters for /metrics: limited:pass_address (optional)

ARGV[1]  now, ms since the epoch
ARGV[2]  factor: passes per ticket of stock (integer >= 1)
ARGV[3]  per-address attempts refilled per window (0 = no per-address limit)
ARGV[4]  per-address window, ms
ARGV[5]  per-address burst

Returns a flat array:
  { 1, "issued" }       a pass was handed out now
  { 2, state }          the user already has one ("issued" or "used"); nothing changed
  { -1 }                no such activity, or not published
  { -4 }                the activity has ended or is closed
  { -6, retry_after_ms } the client address is over its limit (the bucket claims use)
  { -8 }                every pass has been handed out
  { -13 }               this activity does not use passes
--]]

local meta, passes, pass, client = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, factor = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate, window, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

local m = redis.call('HMGET', meta, 'status', 'ends_at', 'require_pass', 'stock_total')
if m[1] ~= 'published' and m[1] ~= 'closed' then
  return { -1 }
end
if m[1] == 'closed' or now >= tonumber(m[2]) then
  return { -4 }
end
if m[3] ~= '1' then
  return { -13 }
end
-- The token bucket of claim.lua: passes and claims from one address draw on it together.
if rate > 0 then
  local b = redis.call('HMGET', client, 't', 'at')
  local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(now - at, 0) * rate / window)
  if tokens < 1 then
    redis.call('HSET', client, 't', tokens, 'at', now)
    if KEYS[5] then
      redis.call('HINCRBY', KEYS[5], 'limited:pass_address', 1)
    end
    return { -6, math.ceil((1 - tokens) * window / rate) }
  end
  redis.call('HSET', client, 't', tokens - 1, 'at', now)
  redis.call('PEXPIRE', client, math.ceil(burst * window / rate) + 1000)
end
local existing = redis.call('GET', pass)
if existing then
  return { 2, existing }
end
if tonumber(redis.call('GET', passes) or '0') >= tonumber(m[4]) * factor then
  return { -8 }
end
redis.call('INCR', passes)
-- The pass lives as long as the activity, plus a day for late reads.
redis.call('SET', pass, 'issued', 'PX', math.max(tonumber(m[2]) - now, 0) + 86400000)
return { 1, 'issued' }
