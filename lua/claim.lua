--[[
claim.lua: one user claims `quantity` tickets of one ticket type of an activity, atomically.

All checks run before any write, so a refusal changes nothing (except the rate counters,
which count attempts). Every key carries the activity's hash tag {a:<id>}. Per-type state
lives in fields of the activity's hashes (`<type>:...`), so a claim that leaves the type
to the script (the activity has one) still names every key it touches here.

KEYS[1]  meta     HASH    status, starts_at, ends_at (ms), per_user_limit (over all types,
                          0 = none), require_pass, id, types (keys, comma separated), and per
                          type <t>:starts_at, <t>:ends_at, <t>:limit, <t>:kind; gen, which
                          every claim here raises by one (see publish.lua)
KEYS[2]  stocks   HASH    type -> tickets left
KEYS[3]  seq      STRING  last ticket sequence number issued (all types)
KEYS[4]  claimed  HASH    user -> tickets the user holds over all types; "user|type" -> of one type
KEYS[5]  tickets  HASH    code -> "user|claim_id|status|claimed_at_ms|type"
KEYS[6]  log      STREAM  claim log, drained to Postgres (field `e`: JSON event)
KEYS[7]  idem     STRING  stored result for (user, Idempotency-Key): "claim_id|type|code|..."
KEYS[8]  deny     SET     blacklisted users
KEYS[9]  rate     STRING  the user's attempts in the current rate window
KEYS[10] pools    HASH    uploaded codes per type (kind = codes): <t>:head and <t>:tail
                          (next index to pop / to push), <t>:<index> -> code
KEYS[11] pass     STRING  the user's claim pass: "issued" until used
KEYS[12] flood    STRING  attempts on the whole activity in the current global window
KEYS[13] client   HASH    the client address's token bucket on this activity (t: tokens,
                          at: ms of the last refill), shared with pass.lua
KEYS[14] metrics  HASH    the activity's counters for /metrics (flashclaim_core::metrics):
                          answers:<outcome>:<type> (type empty before one is chosen) for
                          refusals and replays, claimed:<type> = claims x 2^32 + tickets
                          (one HINCRBY for both: each redis.call costs the claim ~6 % of
                          Redis' work), limited:<user|address|activity>. Optional: a caller
                          naming 13 keys counts nothing.
KEYS[15] bucket   HASH    the stock bucket's own state (activities of several buckets,
                          flashclaim_core::buckets): dry:<type> (ms until which every bucket
                          counts as out of the type), in:<move> (stock credited here, once).
                          Optional: only callers that know the activity's buckets name it.

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
ARGV[12] ticket type key; empty: the activity's only type
ARGV[13] per-address attempts refilled per window (0 = no per-address limit)
ARGV[14] per-address window, ms
ARGV[15] per-address burst: the bucket's size
ARGV[16] the client's address as stored (a keyed hash; empty when unknown), for the log
ARGV[17] answers `unavailable` the caller gave without this script since it last ran it for
         the activity (optional: a reused WASIp3 instance reports them; 0 or absent = none)
ARGV[18] answers `unknown` (the reply was lost), the same way
ARGV[19] 1: a refusal that does not depend on the user (-3, -4, -8) carries a snapshot of
         the activity for the caller's cache (flashclaim_core::claim_cache); optional
ARGV[20] the most claimers the snapshot may list (more: it lists none and says -1)
ARGV[21] the length of KEYS[4] the caller already holds the claimers for (-1: none)
ARGV[22] the user's bucket hash (flashclaim_core::buckets::user_hash): an activity of n > 1
         stock buckets is claimed only in the bucket numbered hash % n, the user's home,
         which holds all that is the user's; elsewhere, or without it, the answer is
         { -16, n } and nothing changes (optional for activities of one bucket)
ARGV[23] empty: a first attempt. Else the same claim again after the caller borrowed stock
         for it from other buckets (lua/lend.lua): the loans, `<move>:<amount>` comma
         separated ('-': none were found), are credited to the type first, each at most
         once (KEYS[15]), and the rate limits are not counted again
ARGV[24] how long a home bucket that borrowed and still falls short answers sold_out
         without asking the other buckets again, ms (with KEYS[15])

Every answer but { -1 } is counted in KEYS[14] (an unknown activity is not: its id would be
a label nobody published). Returns a flat array (Spin flattens nested replies):
  { 1, claim_id, stock_left, type, kind, code_1, ..., code_n }  claimed (stock_left, kind: the type's)
  { 2, claim_id, stock_left, type, kind, code_1, ..., code_n }  repeated Idempotency-Key: the first result
  { -1 }                         no such activity, or not published
  { -3, starts_at_ms }           the activity has not started
  { -3, starts_at_ms, type }     the type has not opened yet
  { -4 }                         the activity has ended or is closed
  { -4, type }                   the type has closed
  { -5 }                         user blacklisted
  { -6, retry_after_ms }         rate limited (the user's limit, the client address's, or the
                                 activity's global one)
  { -7, limit, scope, type }     the user already holds the limit; scope: ticket_type | activity
  { -8, type }                   sold out (no stock, or too few codes left in the type's pool)
  { -9 }                         a claim pass is required and the user has no unused one
  { -10, limit, type }           quantity exceeds the type's per-user limit or the activity's
  { -14, types }                 no type named and the activity has several (types: comma list)
  { -15, types }                 no type of that key in this activity
  { -16, n }                     not the user's home bucket of the activity's n (nothing
                                 changed; ARGV[22] picks the home)
  { -17, type, left, n }         the home bucket has too little of the type left: borrow
                                 from the others of the n and claim again (ARGV[23]); only
                                 for several buckets, and counted as nothing yet

With ARGV[19] = 1, the replies 1, -3, -4 and -8 are followed by '~' and the snapshot (a
claim brings it too, so that the caller knows the sale is open; codes never hold '~'):
  '~', 2m, <the m field/value pairs of KEYS[1]>, n, <n pairs: type, tickets claimable now
  (its stock, or fewer codes left in its pool)>, h, c, <c users holding or having held a
  ticket of the activity> (h: the length of KEYS[4]; c = -1: more than ARGV[20]; c = -2:
  h is ARGV[21], the caller's list stands; a claim always says c = -1)
Nothing else asks for it: it costs a few commands, once per cache entry of a caller.
--]]

local meta, stocks, seq, claimed, tickets = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local log, idem, deny, rate, pools, pass = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local flood, client, metrics, bucket_state = KEYS[12], KEYS[13], KEYS[14], KEYS[15]

local user = ARGV[1]
local quantity = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local claim_id = ARGV[4]
local use_idem = ARGV[6] == '1'

-- Counts the answer under its outcome and type, then gives it back to be returned.
local function answer(outcome, ty, reply)
  if metrics then
    redis.call('HINCRBY', metrics, 'answers:' .. outcome .. ':' .. ty, 1)
  end
  return reply
end

-- The caller's answers given without this script (see ARGV[17]); called once the activity
-- is known to exist, so a made-up id never gets a metrics hash.
local function report_unanswered()
  for i, outcome in ipairs({ 'unavailable', 'unknown' }) do
    local n = tonumber(ARGV[16 + i] or '0') or 0
    if metrics and n > 0 then
      redis.call('HINCRBY', metrics, 'answers:' .. outcome .. ':', n)
    end
  end
end

-- The snapshot of the activity a caller's cache answers from (ARGV[19]), after `reply`;
-- the claimers only with a refusal (while claims succeed they change with each one, and
-- nothing is answered from a cache that needs them).
local function with_snapshot(reply, claimers)
  reply[#reply + 1] = '~'
  local m = redis.call('HGETALL', meta)
  reply[#reply + 1] = #m
  local fields = {}
  for i = 1, #m, 2 do
    reply[#reply + 1] = m[i]
    reply[#reply + 1] = m[i + 1]
    fields[m[i]] = m[i + 1]
  end
  local listed = {}
  local several = tonumber(fields['buckets'] or '1') > 1
  for t in string.gmatch(fields['types'] or '', '[^,]+') do
    local left = tonumber(redis.call('HGET', stocks, t) or '0')
    -- One bucket's empty is not the activity's: sold out only once the others were asked.
    if several and left <= 0 and tonumber(redis.call('HGET', bucket_state, 'dry:' .. t) or '0') <= tonumber(ARGV[3]) then
      left = 1
    end
    if fields[t .. ':kind'] == 'codes' then
      local ends = redis.call('HMGET', pools, t .. ':head', t .. ':tail')
      left = math.min(left, tonumber(ends[2] or '0') - tonumber(ends[1] or '0'))
    end
    listed[#listed + 1] = t
    listed[#listed + 1] = left
  end
  reply[#reply + 1] = #listed / 2
  for _, v in ipairs(listed) do
    reply[#reply + 1] = v
  end
  -- Users only: the hash also holds "user|type" fields. Its length only grows (a return
  -- leaves the fields), so a caller holding the list for this length keeps it.
  local length = redis.call('HLEN', claimed)
  reply[#reply + 1] = length
  -- This bucket's claimers are only the users homed here.
  if not claimers or several then
    reply[#reply + 1] = -1
    return reply
  end
  if length == tonumber(ARGV[21] or '-1') then
    reply[#reply + 1] = -2
    return reply
  end
  if length > 2 * tonumber(ARGV[20] or '0') then
    reply[#reply + 1] = -1
    return reply
  end
  local users = {}
  for _, field in ipairs(redis.call('HKEYS', claimed)) do
    if not string.find(field, '|', 1, true) then
      users[#users + 1] = field
    end
  end
  if #users > tonumber(ARGV[20] or '0') then
    reply[#reply + 1] = -1
    return reply
  end
  reply[#reply + 1] = #users
  for _, u in ipairs(users) do
    reply[#reply + 1] = u
  end
  return reply
end

-- A refusal that any user would get (bar the checks the cache leaves to this script),
-- with the snapshot when asked.
local function refusal(outcome, ty, reply)
  answer(outcome, ty, reply)
  if ARGV[19] ~= '1' then
    return reply
  end
  return with_snapshot(reply, true)
end

if use_idem then
  local previous = redis.call('GET', idem)
  if previous then
    report_unanswered()
    local reply = { 2 }
    for part in string.gmatch(previous, '[^|]+') do
      reply[#reply + 1] = part
    end
    -- { 2, claim_id, type, codes... } -> { 2, claim_id, stock_left, type, kind, codes... }
    table.insert(reply, 3, tonumber(redis.call('HGET', stocks, reply[3]) or '0'))
    table.insert(reply, 5, redis.call('HGET', meta, reply[4] .. ':kind') or 'counter')
    return answer('replayed', reply[4], reply)
  end
end

local m = redis.call('HMGET', meta, 'status', 'starts_at', 'ends_at', 'per_user_limit', 'require_pass', 'id', 'types', 'buckets', 'bucket')
local status, starts_at, ends_at = m[1], tonumber(m[2]), tonumber(m[3])
local activity_limit, require_pass, activity_id, types = tonumber(m[4]) or 0, m[5] == '1', m[6], m[7] or ''
local buckets, bucket = tonumber(m[8]) or 1, tonumber(m[9]) or 0
local retry = (ARGV[23] or '') ~= ''

if status ~= 'published' and status ~= 'closed' then
  return { -1 }
end
report_unanswered()
if buckets > 1 then
  local hash = tonumber(ARGV[22] or '')
  if not hash or hash % buckets ~= bucket or not bucket_state then
    return { -16, buckets }
  end
end
if status == 'closed' or now >= ends_at then
  return refusal('ended', '', { -4 })
end
if now < starts_at then
  return refusal('not_started', '', { -3, starts_at })
end

-- The type: named, or the only one. Keys are [a-z0-9_-], so the comma list is exact.
local ty = ARGV[12]
if ty == '' then
  if types == '' or string.find(types, ',', 1, true) then
    return answer('invalid', '', { -14, types })
  end
  ty = types
elseif not string.find(',' .. types .. ',', ',' .. ty .. ',', 1, true) then
  -- Not the named type as a label: it is whatever the caller sent.
  return answer('invalid', '', { -15, types })
end

local tm = redis.call('HMGET', meta, ty .. ':starts_at', ty .. ':ends_at', ty .. ':limit', ty .. ':kind')
local type_starts, type_ends, limit, kind = tonumber(tm[1]), tonumber(tm[2]), tonumber(tm[3]), tm[4]
-- Stock lent for this claim is this bucket's from now on, whatever the answer.
if retry and buckets > 1 then
  for move, amount in string.gmatch(ARGV[23], '([^:,]+):(%d+)') do
    if redis.call('HSETNX', bucket_state, 'in:' .. move, amount) == 1 then
      redis.call('HINCRBY', stocks, ty, amount)
    end
  end
end
if now >= type_ends then
  return refusal('ended', ty, { -4, ty })
end
if now < type_starts then
  return refusal('not_started', ty, { -3, type_starts, ty })
end
if redis.call('SISMEMBER', deny, user) == 1 then
  return answer('blacklisted', ty, { -5 })
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

-- A token bucket (seed 003's limit_req: a rate with a burst); returns the ms until a
-- token is back when empty. Every attempt takes a token, refused ones included.
local function bucket_empty(key, rate, window, burst)
  if rate <= 0 then
    return nil
  end
  local b = redis.call('HMGET', key, 't', 'at')
  local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(now - at, 0) * rate / window)
  if tokens < 1 then
    redis.call('HSET', key, 't', tokens, 'at', now)
    return math.ceil((1 - tokens) * window / rate)
  end
  redis.call('HSET', key, 't', tokens - 1, 'at', now)
  -- Gone once it would be full again: an idle address costs no memory.
  redis.call('PEXPIRE', key, math.ceil(burst * window / rate) + 1000)
  return nil
end

-- Checked in this order, each only when the one before let the attempt through; a claim
-- again after borrowing was counted the first time.
local wait, limited_by = nil, nil
if not retry then
  wait, limited_by = over_limit(rate, tonumber(ARGV[8]), ARGV[9]), 'user'
end
if not wait and not retry then
  wait, limited_by = bucket_empty(client, tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])), 'address'
end
if not wait and not retry then
  wait, limited_by = over_limit(flood, tonumber(ARGV[10]), ARGV[11]), 'activity'
end
if wait then
  if metrics then
    redis.call('HINCRBY', metrics, 'limited:' .. limited_by, 1)
  end
  return answer('rate_limited', ty, { -6, wait })
end

if quantity > limit then
  return answer('invalid', ty, { -10, limit, ty })
end
if activity_limit > 0 and quantity > activity_limit then
  return answer('invalid', ty, { -10, activity_limit, ty })
end
local user_type = user .. '|' .. ty
local held = redis.call('HMGET', claimed, user_type, user)
if tonumber(held[1] or '0') + quantity > limit then
  return answer('limit_reached', ty, { -7, limit, 'ticket_type', ty })
end
if activity_limit > 0 and tonumber(held[2] or '0') + quantity > activity_limit then
  return answer('limit_reached', ty, { -7, activity_limit, 'activity', ty })
end
local left = tonumber(redis.call('HGET', stocks, ty) or '0')
if left < quantity then
  if buckets > 1 then
    local dry = 'dry:' .. ty
    if retry then
      -- The others were asked and had too little: they are not asked again for a while.
      redis.call('HSET', bucket_state, dry, now + tonumber(ARGV[24]))
    elseif tonumber(redis.call('HGET', bucket_state, dry) or '0') <= now then
      return { -17, ty, left, buckets }
    end
  end
  return refusal('sold_out', ty, { -8, ty })
end
local head_field, tail_field = ty .. ':head', ty .. ':tail'
local head = 0
if kind == 'codes' then
  local ends = redis.call('HMGET', pools, head_field, tail_field)
  head = tonumber(ends[1] or '0')
  if tonumber(ends[2] or '0') - head < quantity then
    return refusal('sold_out', ty, { -8, ty })
  end
end
if require_pass and redis.call('GET', pass) ~= 'issued' then
  return answer('pass_required', ty, { -9 })
end

-- All checks passed: take the stock and issue the tickets.
left = redis.call('HINCRBY', stocks, ty, -quantity)
-- A cache that holds this activity as of an older gen asks the script again.
redis.call('HINCRBY', meta, 'gen', 1)
redis.call('HINCRBY', claimed, user, quantity)
redis.call('HINCRBY', claimed, user_type, quantity)
if require_pass then
  redis.call('SET', pass, 'used', 'KEEPTTL')
end

local codes = {}
if kind == 'codes' then
  for i = 1, quantity do
    local field = ty .. ':' .. (head + i - 1)
    codes[i] = redis.call('HGET', pools, field)
    redis.call('HDEL', pools, field)
  end
  redis.call('HSET', pools, head_field, head + quantity)
else
  local last = redis.call('INCRBY', seq, quantity)
  local i = 0
  -- Bucket b > 0 of several numbers its tickets on its own: its codes end in -<b>, so
  -- that a code alone finds the bucket holding its ticket (flashclaim_core::buckets).
  local suffix = ''
  if bucket > 0 then
    suffix = '-' .. bucket
  end
  for prefix in string.gmatch(ARGV[5], '[^,]+') do
    i = i + 1
    if i > quantity then break end
    codes[i] = prefix .. '-' .. (last - quantity + i) .. suffix
  end
end

local record = user .. '|' .. claim_id .. '|active|' .. ARGV[3] .. '|' .. ty
for _, code in ipairs(codes) do
  redis.call('HSET', tickets, code, record)
end

redis.call('XADD', log, '*', 'e', cjson.encode({
  t = 'claim', claim = claim_id, activity = activity_id, user = user, codes = codes, at = ARGV[3],
  type = ty, addr = ARGV[16],
}))

if use_idem then
  redis.call('SET', idem, claim_id .. '|' .. ty .. '|' .. table.concat(codes, '|'), 'PX', ARGV[7])
end

local reply = { 1, claim_id, left, ty, kind }
for _, code in ipairs(codes) do
  reply[#reply + 1] = code
end
if metrics then
  redis.call('HINCRBY', metrics, 'claimed:' .. ty, 4294967296 + #codes)
end
if ARGV[19] == '1' then
  return with_snapshot(reply, false)
end
return reply
