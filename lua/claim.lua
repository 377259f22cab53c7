--[[
claim.lua: one user claims `quantity` tickets of one activity, atomically.

All checks run before any write, so a refusal changes nothing (except the per-user rate
counter, which counts attempts). Every key carries the activity's hash tag {a:<id>}.

KEYS[1]  meta     HASH    status, starts_at, ends_at (ms), per_user_limit, kind, require_pass, id
KEYS[2]  stock    STRING  tickets left
KEYS[3]  seq      STRING  last ticket sequence number issued
KEYS[4]  claimed  HASH    user -> tickets the user holds
KEYS[5]  tickets  HASH    code -> "user|claim_id|status|claimed_at_ms"
KEYS[6]  log      STREAM  claim log, drained to Postgres (field `e`: JSON event)
KEYS[7]  idem     STRING  stored result for (user, Idempotency-Key)
KEYS[8]  deny     SET     blacklisted users
KEYS[9]  rate     STRING  the user's attempts in the current rate window
KEYS[10] pool     LIST    uploaded codes (kind = codes)
KEYS[11] pass     STRING  the user's claim pass: "issued" until used
KEYS[12] flood    STRING  attempts on the whole activity in the current global window

ARGV[1]  user id
ARGV[2]  quantity (integer >= 1)
ARGV[3]  now, ms since the epoch
ARGV[4]  claim id (unique, chosen by the caller)
ARGV[5]  random code prefixes, one per ticket, comma separated (kind = counter)
ARGV[6]  1 when an Idempotency-Key was given, else 0
ARGV[7]  idempotency record lifetime, ms
ARGV[8]  per-user attempts allowed per window (0 = no limit)
ARGV[9]  rate window, ms
ARGV[10] attempts allowed on the whole activity per global window (0 = no limit)
ARGV[11] global window, ms

Returns a flat array (Spin flattens nested replies):
  { 1, claim_id, stock_left, code_1, ..., code_n }   claimed
  { 2, claim_id, stock_left, code_1, ..., code_n }   repeated Idempotency-Key: the first result
  { -1 }                  no such activity, or not published
  { -3, starts_at_ms }    not started
  { -4 }                  ended or closed
  { -5 }                  user blacklisted
  { -6, retry_after_ms }  rate limited (the user's limit, or the activity's global one)
  { -7, per_user_limit }  the user already holds the limit
  { -8 }                  sold out (no stock, or for kind = codes, too few codes left in the pool)
  { -9 }                  a claim pass is required and the user has no unused one
  { -10, per_user_limit } quantity exceeds the per-user limit
--]]

local meta, stock, seq, claimed, tickets = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local log, idem, deny, rate, pool, pass = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local flood = KEYS[12]

local user = ARGV[1]
local quantity = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local claim_id = ARGV[4]
local use_idem = ARGV[6] == '1'

if use_idem then
  local previous = redis.call('GET', idem)
  if previous then
    local reply = { 2 }
    for part in string.gmatch(previous, '[^|]+') do
      reply[#reply + 1] = part
    end
    table.insert(reply, 3, tonumber(redis.call('GET', stock) or '0'))
    return reply
  end
end

local m = redis.call('HMGET', meta, 'status', 'starts_at', 'ends_at', 'per_user_limit', 'kind', 'require_pass', 'id')
local status, starts_at, ends_at = m[1], tonumber(m[2]), tonumber(m[3])
local limit, kind, require_pass, activity_id = tonumber(m[4]), m[5], m[6] == '1', m[7]

if status ~= 'published' and status ~= 'closed' then
  return { -1 }
end
if status == 'closed' or now >= ends_at then
  return { -4 }
end
if now < starts_at then
  return { -3, starts_at }
end
if redis.call('SISMEMBER', deny, user) == 1 then
  return { -5 }
end

-- A fixed-window counter; returns the ms until the window reopens when over the limit.
local function over_limit(key, max_attempts, window)
  if max_attempts <= 0 then
    return nil
  end
  local attempts = redis.call('INCR', key)
  if attempts == 1 then
    redis.call('PEXPIRE', key, window)
  end
  if attempts <= max_attempts then
    return nil
  end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    redis.call('PEXPIRE', key, window)
    ttl = tonumber(window)
  end
  return ttl
end

local wait = over_limit(rate, tonumber(ARGV[8]), ARGV[9]) or over_limit(flood, tonumber(ARGV[10]), ARGV[11])
if wait then
  return { -6, wait }
end

if quantity > limit then
  return { -10, limit }
end
local held = tonumber(redis.call('HGET', claimed, user) or '0')
if held + quantity > limit then
  return { -7, limit }
end
local left = tonumber(redis.call('GET', stock) or '0')
if left < quantity then
  return { -8 }
end
if kind == 'codes' and redis.call('LLEN', pool) < quantity then
  return { -8 }
end
if require_pass and redis.call('GET', pass) ~= 'issued' then
  return { -9 }
end

-- All checks passed: take the stock and issue the tickets.
left = redis.call('DECRBY', stock, quantity)
redis.call('HINCRBY', claimed, user, quantity)
if require_pass then
  redis.call('SET', pass, 'used', 'KEEPTTL')
end

local codes = {}
if kind == 'codes' then
  codes = redis.call('LPOP', pool, quantity)
else
  local last = redis.call('INCRBY', seq, quantity)
  local i = 0
  for prefix in string.gmatch(ARGV[5], '[^,]+') do
    i = i + 1
    if i > quantity then break end
    codes[i] = prefix .. '-' .. (last - quantity + i)
  end
end

local record = user .. '|' .. claim_id .. '|active|' .. ARGV[3]
for _, code in ipairs(codes) do
  redis.call('HSET', tickets, code, record)
end

redis.call('XADD', log, '*', 'e', cjson.encode({
  t = 'claim', claim = claim_id, activity = activity_id, user = user, codes = codes, at = ARGV[3],
}))

if use_idem then
  redis.call('SET', idem, claim_id .. '|' .. table.concat(codes, '|'), 'PX', ARGV[7])
end

local reply = { 1, claim_id, left }
for _, code in ipairs(codes) do
  reply[#reply + 1] = code
end
return reply
