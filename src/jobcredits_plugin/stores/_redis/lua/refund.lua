-- refund: give a live charge's debit back and delete its record.
--
-- KEYS: the job, the due-set, the balance, the retry marker, and the journal
-- stream when the journal is on. ARGV: the charge id, whether it must match
-- ('1'/'0'), now ('T': the server's), the refund's token, the marker's life
-- in ms, the journal flag.
--
-- A refund deletes the record and leaves a retry marker (KEYS[4]) keyed by
-- what it targeted, the job, and by its own token (drawn once per call), that
-- holds the refunded record for the marker's life (ARGV[5] ms): when the
-- answer is lost and redis-py re-sends the same call, the script finds its
-- marker and answers that refund again, so the caller still learns it
-- refunded (and on_refund fires once for that charge), even when a newer
-- charge of the job has been made meanwhile, which the retry never touches.
-- The journal entry was written by the first run. A refund that refunded
-- nothing writes nothing (its retry decides afresh: nothing had committed).
-- ARGV[6] is the journal flag (KEYS[5] the stream when it is on). Answers
-- {'refunded', raw, now} (raw: the record before the refund) or {}.

jc_arity(4, 6)
local job, due, bal, mark = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
jc_flag(ARGV[2], 'charge id flag', '01')
local now, nows = jc_now(ARGV[3])
if type(ARGV[4]) ~= 'string' or ARGV[4] == '' then jc_fail('refund token', ARGV[4]) end
jc_int(ARGV[5], 'marker life', 1, JC_MS)
local jr = jc_flag(ARGV[6], 'journal flag', '01')
if jr == '1' then jc_arity(5, 6) end
if jr == '1' and (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  return redis.error_reply('the jobcredits journal needs Redis 7.0 or newer (or journal=false)')
end
local kept = jc_kept(mark, 'table', 1, 1)
if kept then return {'refunded', kept[1], nows} end
local raw = redis.call('HGETALL', job)
if #raw == 0 then return {} end
local rec = {}
for i = 1, #raw, 2 do rec[raw[i]] = raw[i + 1] end
-- a refunded tombstone (left by an older version) counts as absent
if rec['st'] == 'refunded' then return {} end
if ARGV[2] == '1' and rec['c'] ~= ARGV[1] then return {} end
if now >= jc_num(rec['ea'], 'stored expires_at') then return {} end
local d = jc_int(rec['d'], 'stored debit', 0, JC_I64)
local before = jc_int(redis.call('GET', bal) or '0', 'stored balance', -JC_I64, JC_I64)
if jr == '1' then
  jc_str(rec['a'], 'stored account')
  jc_str(rec['x'], 'stored record')
end
jc_credit_ok(before, d, 'stored debit')
local m = cjson.encode({raw})
-- Everything is checked: from here on, the writes.
redis.call('SET', mark, m, 'PX', ARGV[5])
redis.call('ZREM', due, job)
redis.call('DEL', job)
if d ~= 0 then redis.call('INCRBY', bal, rec['d']) end
if jr == '1' then
  redis.call('XADD', KEYS[5], '0-*', 'k', 'refund', 'a', rec['a'], 'c', rec['c'], 'x', rec['x'],
             'd', rec['d'], 'b', redis.call('GET', bal) or '0', 't', nows)
end
return {'refunded', raw, nows}
