--[[
pool.lua: put uploaded codes into an activity's pool (kind = codes).

Postgres holds every uploaded code; Redis holds the codes not yet given out. The pool is
filled once from Postgres when the activity is first published ("load"), and codes
uploaded later are appended ("add") only once that has happened, so no code is ever put
in twice: before the first load, Postgres alone holds them and the load takes them all.

KEYS[1]  meta   HASH    the field pool_loaded marks the first load
KEYS[2]  pool   LIST    codes not yet given out

ARGV[1]  mode: load | add
ARGV[2..] codes

Returns a flat array:
  { pushed, pool_length }   pushed is 0 when nothing was to be done
--]]

local meta, pool = KEYS[1], KEYS[2]
local mode = ARGV[1]

local loaded = redis.call('HEXISTS', meta, 'pool_loaded') == 1
if (mode == 'load' and loaded) or (mode == 'add' and not loaded) then
  return { 0, redis.call('LLEN', pool) }
end

-- unpack() of a whole upload would overflow Lua's stack: push in slices.
local pushed, n = 0, #ARGV
local i = 2
while i <= n do
  local last = math.min(i + 999, n)
  redis.call('RPUSH', pool, unpack(ARGV, i, last))
  pushed = pushed + (last - i + 1)
  i = last + 1
end
redis.call('HSET', meta, 'pool_loaded', '1')
return { pushed, redis.call('LLEN', pool) }
