-- prune: settle what is due in one due-set (one account slot): refund
-- pending charges whose lease ran out, expire charged ones.
--
-- KEYS: the due-set, the batch's retry marker, and the journal stream when
-- the journal is on. ARGV: now ('T': the server's), the batch size, the key
-- prefix of the due-set's slot (to name balances), the journal flag, the
-- marker's life in ms.
--
-- Settles up to ARGV[2] due records of one due-set (one account slot). Answers
-- {examined, raw1, raw2, ...}: examined counts members taken off the set (also
-- those whose hash had vanished), so the caller knows whether more remain.
-- ARGV[4] is the journal flag (KEYS[3] the stream when it is on): one entry
-- per settled record, in the order of the answer. Two passes: the first reads
-- and checks every record it will settle (and the balances it will credit),
-- the second writes, so a bad record stops the batch before anything of it is
-- written. A batch that takes anything off the set keeps its answer in a
-- retry marker (KEYS[2], named by a token drawn per call, in the due-set's
-- slot) for ARGV[5] ms: a retry of a batch whose answer was lost answers the
-- same records, so their hooks fire once. Its size is bounded by the batch.

jc_arity(2, 5)
local due, mark = KEYS[1], KEYS[2]
local now, nows = jc_now(ARGV[1])
-- on the server's clock the answer carries the now it used, second:
-- {examined, now, raw1, ...}
local server = ARGV[1] == 'T'
local first_raw = 2
if server then first_raw = 3 end
local limit = jc_int(ARGV[2], 'batch', 1, 1000000)
local base = ARGV[3]
local jr = jc_flag(ARGV[4], 'journal flag', '01') == '1'
jc_int(ARGV[5], 'marker life', 1, JC_MS)
if jr then jc_arity(3, 5) end
if jr and (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  return redis.error_reply('the jobcredits journal needs Redis 7.0 or newer (or journal=false)')
end
local kept = jc_kept(mark, 'number', first_raw)
if kept then
  if server and type(kept[2]) ~= 'string' then jc_fail('retry marker', cjson.encode(kept)) end
  return kept
end
local members = redis.call('ZRANGEBYSCORE', due, '-inf', nows, 'LIMIT', 0, limit)
local plan = {}
local credited = {}
for _, job in ipairs(members) do
  local raw = redis.call('HGETALL', job)
  local item = {job = job, raw = raw}
  if #raw > 0 then
    local rec = {}
    for i = 1, #raw, 2 do rec[raw[i]] = raw[i + 1] end
    if rec['st'] == 'pending' then
      item.settle = now >= jc_num(rec['lu'], 'stored lease_until')
    elseif rec['st'] ~= 'refunded' then
      item.settle = now >= jc_num(rec['ea'], 'stored expires_at')
    end
    if item.settle then
      jc_str(rec['a'], 'stored account')
      jc_str(rec['c'], 'stored charge id')
      jc_str(rec['x'], 'stored record')
      item.rec = rec
      item.bal = base .. 'b:' .. string.len(rec['a']) .. ':' .. rec['a']
      if rec['st'] == 'pending' then
        local d = jc_int(rec['d'], 'stored debit', 0, JC_I64)
        local b = credited[item.bal]
        if b == nil then
          b = jc_int(redis.call('GET', item.bal) or '0', 'stored balance', -JC_I64, JC_I64)
        end
        jc_credit_ok(b, d, 'stored debit')
        credited[item.bal] = b + d
      end
    end
  end
  plan[#plan + 1] = item
end
local out = {#members}
if server then out[2] = nows end
for _, item in ipairs(plan) do
  if item.settle then out[#out + 1] = item.raw end
end
local m = nil
if #members > 0 then m = cjson.encode(out) end
-- Everything is checked: from here on, the writes.
if m ~= nil then redis.call('SET', mark, m, 'PX', ARGV[5]) end
for _, item in ipairs(plan) do
  if #item.raw == 0 then
    redis.call('ZREM', due, item.job)
  elseif item.settle then
    local rec = item.rec
    redis.call('DEL', item.job)
    redis.call('ZREM', due, item.job)
    local kind, d = 'expire', '0'
    if rec['st'] == 'pending' then
      kind, d = 'refund', rec['d']
      if d ~= '0' then redis.call('INCRBY', item.bal, d) end
    end
    if jr then
      redis.call('XADD', KEYS[3], '0-*', 'k', kind, 'a', rec['a'], 'c', rec['c'],
                 'x', rec['x'], 'd', d, 'b', redis.call('GET', item.bal) or '0', 't', nows)
    end
  end
end
return out
