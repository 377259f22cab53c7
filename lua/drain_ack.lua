--[[
drain_ack.lua: acknowledge entries after their Postgres transaction committed, and delete
them so the log holds only what is not yet in Postgres.

KEYS[1]  log  STREAM  the activity's claim log

ARGV[1]      consumer group
ARGV[2..n]   entry ids to acknowledge

Returns { acknowledged, entries_left_in_log }
--]]

local log, group = KEYS[1], ARGV[1]
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
local acked = 0
if #ids > 0 then
  acked = redis.call('XACK', log, group, unpack(ids))
  redis.call('XDEL', log, unpack(ids))
end
return { acked, redis.call('XLEN', log) }
