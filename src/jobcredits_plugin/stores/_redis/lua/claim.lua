-- claim: charge a job once, reuse a live charge, or answer why not.
--
-- KEYS: the job, the due-set, the balance, the claim's retry marker (named by
-- its charge id), and the journal stream when the journal is on.
--
-- The claim's control values come packed, in ARGV[1], separated by the unit
-- separator (\31, which no number or charge id contains): now, charge_id,
-- cost, max_uses (0: none), balances (1/0), expires_at, lease_until, safety
-- expiry in ms (0: none), journal (0: off, 1: on, 2: on with reuses), the
-- retry marker's life in ms. ARGV[2] is the account, ARGV[3] the x field.
-- On the server's clock (server_clock=True) now is 'T', expires_at and
-- lease_until are the ttl and the lease, and ARGV[3] is the x field without
-- its last element (charged_at) and closing bracket: the script reads TIME
-- and completes all three (see jc_now). Every answer ends with the now the
-- script used, which the Python side decides and builds the records with.
--
-- The retry marker holds what the claim answered, [status, balance, the record
-- as it was], written by every claim that writes over a record it found (a
-- charge that settled or replaced it, a reuse, a settlement before a 402)
-- before its other writes; a retry of the same call (redis-py re-sends it
-- when the answer was lost) finds it and answers it again, so the Python side
-- rebuilds the very result and events of the original: the settlement of a
-- stale or expired record is reported (and its hook fires) once, a reuse is
-- counted and journaled once. Claims that write nothing (409, a plain 402)
-- keep no marker: their retry decides afresh. Nor does a charge under an
-- empty key: the record it wrote carries its charge id, so its retry finds
-- that record and answers 'replay', the same charge and its one event (a
-- marker there was a SET of a new key on every new job: 6 us of its script).
--
-- Answers {status, the record as it was (a flat HGETALL list), the stored
-- balance as it was ('0' when balances are off), now}, status one of
-- charged, reused, replay, in_progress, exhausted, insufficient.

jc_arity(4, 3)
local job, due, bal, mark = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- the ten control values, none empty, in one match (a gmatch loop filling
-- the table cost three times as much)
local p = {string.match(ARGV[1], '^' .. string.rep('([^\31]+)\31', 9) .. '([^\31]+)$')}
if #p ~= 10 then jc_fail('claim arguments', ARGV[1]) end
local now, nows = jc_now(p[1])
local cid = p[2]
local cost = p[3]
local ncost = jc_int(cost, 'cost', 0, JC_MAX)
local max_uses = jc_int(p[4], 'max_uses', 0, JC_MAX)
local balances = jc_flag(p[5], 'balances flag', '01')
-- the new record's expiry and lease end, and its x field (whose last
-- element is charged_at): as the caller computed them from its now, or, on
-- the server's clock, computed here from the ttl and lease it sent instead
-- and the x it sent without its charged_at
local ea, lu, nx = p[6], p[7], ARGV[3]
if p[1] == 'T' then
  ea = jc_time(now + jc_num(p[6], 'ttl'))
  lu = jc_time(now + jc_num(p[7], 'lease'))
  nx = jc_str(ARGV[3], 'record') .. nows .. ']'
else
  jc_num(p[6], 'expires_at')
  jc_num(p[7], 'lease_until')
end
local expiry_ms = jc_int(p[8], 'safety expiry', 0, JC_MS)
local jr = jc_flag(p[9], 'journal flag', '012')
jc_int(p[10], 'marker life', 1, JC_MS)
if jr ~= '0' then jc_arity(5, 3) end
if jr ~= '0' and (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  return redis.error_reply('the jobcredits journal needs Redis 7.0 or newer (or journal=false)')
end
-- A retry of a call that committed: the original's answer, as it was.
local kept = jc_kept(mark, 'string', 3, 3)
if kept then
  if type(kept[2]) ~= 'string' then jc_fail('retry marker', cjson.encode(kept)) end
  -- the original's now too, so the retry rebuilds the very same record
  local kept_now = kept[4]
  if type(kept_now) ~= 'string' then kept_now = nows end
  return {kept[1], kept[3], kept[2], kept_now}
end
local raw = redis.call('HGETALL', job)
local rec = {}
for i = 1, #raw, 2 do rec[raw[i]] = raw[i + 1] end
local st = rec['st']
local takeover = #raw > 0 and rec['c'] ~= cid and st == 'pending'
-- A follow-up (another call's live charge) writes no journal entry unless
-- reuses are journaled (jr '2'), so with balances off it needs no stored
-- balance: one GET fewer on the commonest call.
local reuse = #raw > 0 and rec['c'] ~= cid and st == 'charged'
  and now < jc_num(rec['ea'], 'stored expires_at')
local stored = '0'
if balances == '1' or takeover or jr == '2' or (jr == '1' and not reuse) then
  stored = redis.call('GET', bal) or '0'
end
local nstored = jc_int(stored, 'stored balance', -JC_I64, JC_I64)
if #raw > 0 and rec['c'] ~= cid and jr ~= '0' then jc_str(rec['x'], 'stored record') end
local balance = '0'
if balances == '1' then balance = stored end
local function log(kind, c, x, d, b)
  redis.call('XADD', KEYS[5], '0-*', 'k', kind, 'a', ARGV[2], 'c', c, 'x', x, 'd', d,
             'b', string.format('%d', b), 't', nows)
end
local refund_debited = nil
local expired = false
local settled = false
if #raw > 0 then
  if rec['c'] == cid then
    -- our own charge, made under an empty key (which keeps no marker) or
    -- whose marker is gone: answered as that charge, journaled by that
    -- attempt, so not again
    return {'replay', raw, balance, nows}
  end
  if st == 'pending' then
    if now < jc_num(rec['lu'], 'stored lease_until') then
      return {'in_progress', raw, balance, nows}
    end
    refund_debited = rec['d']
    jc_credit_ok(nstored, jc_int(refund_debited, 'stored debit', 0, JC_I64), 'stored debit')
    settled = true
  elseif reuse then
    local uses = jc_int(rec['u'], 'stored uses', 0, JC_I64 - 1)
    if max_uses > 0 and uses >= max_uses then
      return {'exhausted', raw, balance, nows}
    end
    local m = cjson.encode({'reused', balance, raw, nows})
    -- Everything is checked: from here on, the writes.
    redis.call('SET', mark, m, 'PX', p[10])
    redis.call('HINCRBY', job, 'u', 1)
    if jr == '2' then log('reuse', rec['c'], rec['x'], '0', nstored) end
    return {'reused', raw, balance, nows}
  else
    settled = true
    expired = st == 'charged'
  end
end
local run = nstored
local available = tonumber(balance)
if refund_debited ~= nil then available = available + tonumber(refund_debited) end
local debit = '0'
local enough = true
if balances == '1' then
  if available < ncost then enough = false else debit = cost end
end
-- What a retry of this call answers: every outcome that writes over a
-- record keeps it (a charge under an empty key is found by its record).
local m = nil
if enough and #raw > 0 then
  m = cjson.encode({'charged', balance, raw, nows})
elseif settled then
  m = cjson.encode({'insufficient', balance, raw, nows})
end
-- Everything is checked: from here on, the writes.
if m ~= nil then redis.call('SET', mark, m, 'PX', p[10]) end
-- The settlement of what was there commits whether or not the charge does.
if refund_debited ~= nil then
  if refund_debited ~= '0' then redis.call('INCRBY', bal, refund_debited) end
  if jr ~= '0' then
    run = run + tonumber(refund_debited)
    log('refund', rec['c'], rec['x'], refund_debited, run)
  end
elseif expired and jr ~= '0' then
  log('expire', rec['c'], rec['x'], '0', run)
end
if not enough then
  if settled then
    redis.call('DEL', job)
    redis.call('ZREM', due, job)
  end
  return {'insufficient', raw, balance, nows}
end
if debit ~= '0' then redis.call('DECRBY', bal, debit) end
if #raw > 0 then redis.call('DEL', job) end
redis.call('HSET', job, 'a', ARGV[2], 'x', nx, 'c', cid, 'st', 'pending',
           'ea', ea, 'lu', lu, 'u', '1', 'd', debit)
redis.call('ZADD', due, lu, job)
if expiry_ms > 0 then
  redis.call('PEXPIRE', job, p[8])
  -- The due-set outlives its longest-lived job by up to a second: when its
  -- expiry must move, it moves a second further than needed, so the charges
  -- of the next second find it late enough and skip the PEXPIRE (a PTTL and
  -- a PEXPIRE on nearly every charge before). PTTL answers -1 for a due-set
  -- this ZADD just created, which then gets its expiry too.
  if redis.call('PTTL', due) < expiry_ms then
    -- '%d': a Lua number passed as is would be spelled by %.14g (expiry_ms is
    -- at most JC_MS, 13 digits, but the spelling must not depend on that)
    redis.call('PEXPIRE', due, string.format('%d', expiry_ms + 1000))
  end
end
if jr ~= '0' then
  local d = '0'
  if debit ~= '0' then d = '-' .. debit end
  log('charge', cid, nx, d, run - tonumber(debit))
end
return {'charged', raw, balance, nows}
