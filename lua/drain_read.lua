--[[
drain_read.lua: take a batch of claim-log entries for one drain run.

Entries another run took but never acknowledged (it died, or is slower than the
reclaim timeout) are taken over first; then entries never delivered to any run.
Entries stay pending until drain_ack.lua, so a run that dies loses nothing.

KEYS[1]  log  STREAM  the activity's claim log

ARGV[1]  consumer group
ARGV[2]  consumer name of this run (unique per run)
ARGV[3]  batch size (max entries returned)
ARGV[4]  reclaim timeout, ms: entries pending longer than this are taken over

Returns a flat array of pairs: { id_1, payload_1, id_2, payload_2, ... } (empty: nothing to do)
--]]

local log = KEYS[1]
local group, consumer = ARGV[1], ARGV[2]
local count = tonumber(ARGV[3])

redis.pcall('XGROUP', 'CREATE', log, group, '0', 'MKSTREAM')

local out = {}
local function take(entries)
  for _, entry in ipairs(entries) do
    -- entry = { id, { field, value, ... } }; a deleted entry has no fields.
    local fields = entry[2]
    if fields then
      for i = 1, #fields, 2 do
        if fields[i] == 'e' then
          out[#out + 1] = entry[1]
          out[#out + 1] = fields[i + 1]
        end
      end
    end
  end
end

local reclaimed = redis.call('XAUTOCLAIM', log, group, consumer, ARGV[4], '0-0', 'COUNT', count)
take(reclaimed[2])

local room = count - #out / 2
if room > 0 then
  local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', room, 'STREAMS', log, '>')
  if fresh then
    take(fresh[1][2])
  end
end
return out
