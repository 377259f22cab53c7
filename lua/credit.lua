--[[
credit.lua: a loan between stock buckets (lua/lend.lua) that the borrowing claim may never
have credited (its script did not run, or its reply was lost) is credited to the home
bucket here, at most once however often this runs: claim.lua and this script both mark
in:<move> first.

KEYS[1]  stocks   HASH    the home bucket's type -> tickets left
KEYS[2]  bucket   HASH    the home bucket's state (in:<move>)

ARGV[1]  move id
ARGV[2]  type key
ARGV[3]  amount

Returns { 1 } when credited now, { 0 } when it already was.
--]]

local stocks, bucket_state = KEYS[1], KEYS[2]
if redis.call('HSETNX', bucket_state, 'in:' .. ARGV[1], ARGV[3]) == 0 then
  return { 0 }
end
redis.call('HINCRBY', stocks, ARGV[2], tonumber(ARGV[3]))
return { 1 }
