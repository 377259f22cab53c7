--[[
login.lua: the failed-login throttle, checked before a password is hashed.

An attempt is admitted and counted as a failure in one step ("try"), before its hash: so
however many guesses arrive at once, no more than a key's free failures are ever hashed
(reading first and counting after the hash would let every guess of a burst through). A
success gives its failure back ("clear"). Kept in Redis, not Postgres, so that a refused
guess costs one round trip and no Postgres connection.

A key's wait: none below its free failures; from there `first_wait` doubling with each
failure beyond them, at most `max_wait`, counted from its last admitted attempt. A key
quiet for `forget` starts again from zero (and expires then).

KEYS[1]  user  HASH  n: failures counted for the username, last: ms of the last one
KEYS[2]  addr  HASH  the same for the client address
KEYS[3]  metrics HASH  the global counters for /metrics (flashclaim_core::metrics::GLOBAL_KEY):
                 login:checked, login:throttled, login:succeeded (optional)

ARGV[1]  mode: "try" or "clear"
ARGV[2]  now, ms since the epoch
ARGV[3]  forget after, ms
ARGV[4]  free failures per username (0: the username is never throttled)
ARGV[5]  free failures per address (0: the address is never throttled)
ARGV[6]  first wait, ms
ARGV[7]  longest wait, ms

Returns for "try": { 1, 0 } admitted (one failure counted for both keys, to be given back
by "clear" if the password is right); { 0, wait_ms } refused, nothing counted, wait_ms
being the longer of the two keys' waits. For "clear": {} (the username's count is gone;
the address keeps the rest of its count, so one good password from a shared address does
not reset a guessing run against other accounts).
--]]

local mode, now, forget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local function count(field)
  if KEYS[3] then
    redis.call('HINCRBY', KEYS[3], 'login:' .. field, 1)
  end
end

local function load(key)
  local c = redis.call('HMGET', key, 'n', 'last')
  local n, last = tonumber(c[1]) or 0, tonumber(c[2]) or 0
  if now - last >= forget then
    n = 0
  end
  return n, last
end

if mode == 'clear' then
  count('succeeded')
  redis.call('DEL', KEYS[1])
  local n = load(KEYS[2])
  if n > 0 then
    redis.call('HSET', KEYS[2], 'n', n - 1)
  end
  return {}
end

local first_wait, max_wait = tonumber(ARGV[6]), tonumber(ARGV[7])
local counts, wait = {}, 0
for i = 1, 2 do
  local free = tonumber(ARGV[3 + i])
  local n, last = load(KEYS[i])
  counts[i] = n
  if free > 0 and n >= free then
    local doublings = math.min(n - free, 30)
    local left = last + math.min(first_wait * 2 ^ doublings, max_wait) - now
    if left > wait then
      wait = left
    end
  end
end
if wait > 0 then
  count('throttled')
  return { 0, math.ceil(wait) }
end
count('checked')
for i = 1, 2 do
  redis.call('HSET', KEYS[i], 'n', counts[i] + 1, 'last', now)
  redis.call('PEXPIRE', KEYS[i], forget)
end
return { 1, 0 }
