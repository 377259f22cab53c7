--[[
pool.lua: put uploaded codes into the pool of one ticket type (kind = codes).

Postgres holds every uploaded code; Redis holds the codes not yet given out. A type's pool
is filled once from Postgres when the activity is first published ("load"), and codes
uploaded later are appended ("add") only once that has happened, so no code is ever put
in twice: before the first load, Postgres alone holds them and the load takes them all.

The pool of a type is a queue inside the activity's pools hash (see claim.lua): codes are
pushed at <type>:tail and popped at <type>:head.

KEYS[1]  meta   HASH    the field <type>:pool_loaded marks the first load; gen, raised by one
                        when codes were pushed (see publish.lua)
KEYS[2]  pools  HASH    <type>:head, <type>:tail, <type>:<index> -> code

ARGV[1]  mode: load | add
ARGV[2]  ticket type key
ARGV[3..] codes

Returns a flat array:
  { pushed, pool_length }   pushed is 0 when nothing was to be done
--]]

local meta, pools = KEYS[1], KEYS[2]
local mode, ty = ARGV[1], ARGV[2]
local flag, head_field, tail_field = ty .. ':pool_loaded', ty .. ':head', ty .. ':tail'

local function length()
  local ends = redis.call('HMGET', pools, head_field, tail_field)
  return tonumber(ends[2] or '0') - tonumber(ends[1] or '0')
end

local loaded = redis.call('HEXISTS', meta, flag) == 1
if (mode == 'load' and loaded) or (mode == 'add' and not loaded) then
  return { 0, length() }
end

local tail = tonumber(redis.call('HGET', pools, tail_field) or '0')
-- unpack() of a whole upload would overflow Lua's stack: set in slices.
local n, i = #ARGV, 3
while i <= n do
  local last = math.min(i + 499, n)
  local fields = {}
  for j = i, last do
    fields[#fields + 1] = ty .. ':' .. tail
    fields[#fields + 1] = ARGV[j]
    tail = tail + 1
  end
  redis.call('HSET', pools, unpack(fields))
  i = last + 1
end
redis.call('HSET', pools, tail_field, tail)
redis.call('HSET', meta, flag, '1')
redis.call('HINCRBY', meta, 'gen', 1)
return { n - 2, length() }
