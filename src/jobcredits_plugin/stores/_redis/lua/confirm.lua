-- confirm: a pending charge becomes charged (its handler succeeded); its
-- due-set score moves from the lease's end to the expiry.
--
-- KEYS: the job, the due-set. ARGV: the charge id, whether it must match
-- ('1') or not ('0'), and 'T' on the server's clock. Answers the record as it
-- was (a flat HGETALL list, empty when there is none or it is another
-- charge's), or {now, that record} on the server's clock.

jc_arity(2, 2)
local job, due = KEYS[1], KEYS[2]
jc_flag(ARGV[2], 'charge id flag', '01')
-- ARGV[3] = 'T' (server_clock): answer {now, raw}, the server's now telling
-- the caller whether a record confirmed before is still live
local nows = nil
if ARGV[3] == 'T' then
  local _
  _, nows = jc_now('T')
end
local raw = redis.call('HGETALL', job)
local function answer(r)
  if nows ~= nil then return {nows, r} end
  return r
end
if #raw == 0 then return answer({}) end
local rec = {}
for i = 1, #raw, 2 do rec[raw[i]] = raw[i + 1] end
if ARGV[2] == '1' and rec['c'] ~= ARGV[1] then return answer({}) end
if rec['st'] == 'pending' then
  jc_num(rec['ea'], 'stored expires_at')
  redis.call('ZADD', due, rec['ea'], job)
  redis.call('HSET', job, 'st', 'charged')
end
return answer(raw)
