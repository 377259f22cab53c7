--[[
publish.lua: load a published activity into Redis, or refresh its settings.

The stock is set only when the activity is first loaded: publishing again (or after a
Redis restart with data) never resets the stock that claims have already taken.

KEYS[1]  meta   HASH    activity settings read by claim.lua
KEYS[2]  stock  STRING  tickets left
KEYS[3]  log    STREAM  claim log; its consumer group is created here
KEYS[4]  view   STRING  cached public JSON of the activity (dropped so readers reload it)

ARGV[1]  activity id
ARGV[2]  starts_at, ms since the epoch
ARGV[3]  ends_at, ms since the epoch
ARGV[4]  per-user limit
ARGV[5]  kind: counter | codes
ARGV[6]  require_pass: 1 | 0
ARGV[7]  stock_total
ARGV[8]  status: published | closed
ARGV[9]  consumer group of the drain
ARGV[10] stock to set when none is loaded: stock_total less the tickets Postgres already
         holds, so a reload after Redis lost its data never hands out drained stock again

Returns { loaded, stock_left }: loaded is 1 when the stock was set now, 0 when it was
already there.
--]]

local meta, stock, log, view = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

redis.call('HSET', meta,
  'id', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3], 'per_user_limit', ARGV[4],
  'kind', ARGV[5], 'require_pass', ARGV[6], 'stock_total', ARGV[7], 'status', ARGV[8])

local loaded = 0
if redis.call('EXISTS', stock) == 0 then
  redis.call('SET', stock, ARGV[10])
  loaded = 1
end

-- BUSYGROUP (the group exists) is the normal case after the first publish.
redis.pcall('XGROUP', 'CREATE', log, ARGV[9], '0', 'MKSTREAM')
redis.call('DEL', view)

return { loaded, tonumber(redis.call('GET', stock)) }
