--[[
tally.lua: add to counters of a metrics hash, and optionally record when something last
succeeded, in one round trip (the drain notes each run with it).

KEYS[1]  metrics  HASH  flashclaim_core::metrics::GLOBAL_KEY

ARGV[1]  field to set to ARGV[2] ('' to set none), e.g. drain:last_success_ms
ARGV[2]  its value
ARGV[3..] field, increment pairs

Returns {}.
--]]

if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
for i = 3, #ARGV - 1, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {}
