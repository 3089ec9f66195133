-- set_cursor: store a journal cursor's position.
--
-- KEYS: the cursors hash. ARGV: the cursor's name, the position, force
-- ('1'/'0'). A cursor only moves forward unless forced; answers the stored
-- position.

jc_arity(1, 3)
local position = jc_int(ARGV[2], 'position', 0, JC_MAX)
local force = jc_flag(ARGV[3], 'force flag', '01')
local old = redis.call('HGET', KEYS[1], ARGV[1])
if force ~= '1' and old and tonumber(old) ~= nil and tonumber(old) >= position then return old end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
