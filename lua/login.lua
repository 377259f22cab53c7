--[[
login.lua: the failed-login counters the auth component reads before hashing a password.

Kept in Redis, not Postgres, because a refused login must cost next to nothing: a flood of
guesses beside a claim storm would otherwise buy a Postgres connection (a backend process)
per attempt. Policy (thresholds, back-off) is decided in Rust (flashclaim_core::throttle)
from the counts this returns; this script only counts, atomically.

KEYS[1]  user  HASH  n: consecutive failures for the username, last: ms of the last one
KEYS[2]  addr  HASH  the same for the client address

ARGV[1]  mode: "read" (count nothing), "fail" (one more failure for both), "clear" (a
         success: the username starts again; the address keeps its count)
ARGV[2]  now, ms since the epoch
ARGV[3]  forget after, ms: a key quiet this long starts again from zero, and expires then

Returns { user_n, user_last_ms, addr_n, addr_last_ms } after the mode's change (0, 0 for a
key with no failures); "clear" returns {}.
--]]

local mode, now, forget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

if mode == 'clear' then
  redis.call('DEL', KEYS[1])
  return {}
end

local out = {}
for i = 1, 2 do
  local c = redis.call('HMGET', KEYS[i], 'n', 'last')
  local n, last = tonumber(c[1]) or 0, tonumber(c[2]) or 0
  if mode == 'fail' then
    if now - last >= forget then
      n = 0
    end
    n, last = n + 1, now
    redis.call('HSET', KEYS[i], 'n', n, 'last', last)
    redis.call('PEXPIRE', KEYS[i], forget)
  end
  out[#out + 1] = n
  out[#out + 1] = last
end
return out
