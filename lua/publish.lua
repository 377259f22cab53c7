--[[
publish.lua: load a published activity and its ticket types into Redis, or refresh their
settings.

A type's stock is set only when it is first loaded: publishing again (or after a Redis
restart with data) never resets the stock that claims have already taken.

KEYS[1]  meta    HASH    activity and per-type settings read by claim.lua
KEYS[2]  stocks  HASH    type -> tickets left
KEYS[3]  log     STREAM  claim log; its consumer group is created here
KEYS[4]  view    STRING  cached public JSON of the activity (dropped so readers reload it)

ARGV[1]  activity id
ARGV[2]  starts_at, ms since the epoch
ARGV[3]  ends_at, ms since the epoch
ARGV[4]  per-user limit over all types (0 = none beyond each type's)
ARGV[5]  require_pass: 1 | 0
ARGV[6]  stock_total (sum over the types; the claim passes are counted from it)
ARGV[7]  status: published | closed
ARGV[8]  consumer group of the drain
ARGV[9]  stock buckets of the activity (flashclaim_core::buckets; 1: the activity is one)
ARGV[10] which bucket these keys are (0 .. ARGV[9] - 1); the stocks and stock_total below
         are this bucket's share
ARGV[11..] per type, in the activity's order, 7 values each:
         key, starts_at ms, ends_at ms (the type's window, the activity's when it has none),
         per-user limit, kind (counter | codes), stock_total, stock to set when none is
         loaded (stock_total less the type's tickets Postgres already holds, so a reload
         after Redis lost its data never hands out drained stock again)

Every run moves the activity's `gen` (KEYS[1]) on: to the server's clock in microseconds,
or one past what it was if that is more. `gen` is the activity's generation: every script
that changes what a claim cache holds (flashclaim_core::claim_cache: the meta hash, a
type's stock, who has claimed) raises it (claim.lua, return.lua, pool.lua), so a cache
that finds it unchanged (one HGET) may go on answering from what it learned. From the
clock, a generation never comes back after Redis lost the activity and it was loaded again.

Returns { loaded, stock_left }: loaded is 1 when the first type's stock was set now (all
types are loaded together), 0 when it was already there; stock_left over all types.
--]]

local meta, stocks, log, view = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local keys = {}
local settings = {
  'id', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3], 'per_user_limit', ARGV[4],
  'require_pass', ARGV[5], 'stock_total', ARGV[6], 'status', ARGV[7],
  'buckets', ARGV[9], 'bucket', ARGV[10],
}
local loaded, stock_left = 0, 0
for i = 11, #ARGV, 7 do
  local ty = ARGV[i]
  keys[#keys + 1] = ty
  for _, pair in ipairs({
    { 'starts_at', ARGV[i + 1] }, { 'ends_at', ARGV[i + 2] }, { 'limit', ARGV[i + 3] },
    { 'kind', ARGV[i + 4] }, { 'stock_total', ARGV[i + 5] },
  }) do
    settings[#settings + 1] = ty .. ':' .. pair[1]
    settings[#settings + 1] = pair[2]
  end
  if redis.call('HSETNX', stocks, ty, ARGV[i + 6]) == 1 and i == 11 then
    loaded = 1
  end
  stock_left = stock_left + tonumber(redis.call('HGET', stocks, ty))
end
settings[#settings + 1] = 'types'
settings[#settings + 1] = table.concat(keys, ',')
local clock = redis.call('TIME')
local gen = math.max(tonumber(clock[1]) * 1000000 + tonumber(clock[2]), tonumber(redis.call('HGET', meta, 'gen') or '0') + 1)
settings[#settings + 1] = 'gen'
settings[#settings + 1] = string.format('%.0f', gen)
redis.call('HSET', meta, unpack(settings))

-- BUSYGROUP (the group exists) is the normal case after the first publish.
redis.pcall('XGROUP', 'CREATE', log, ARGV[8], '0', 'MKSTREAM')
redis.call('DEL', view)

return { loaded, stock_left }
