-- luacheck's configuration, for the Redis store's Lua scripts
-- (src/jobcredits_plugin/stores/_redis/lua; `luacheck src` in tox's lint env).

-- Redis runs scripts on Lua 5.1, with these libraries and values as globals
-- (read-only: a script may not set a global at all).
std = "lua51"
read_globals = { "redis", "KEYS", "ARGV", "cjson", "cmsgpack", "bit", "struct" }
-- What Lua 5.1 has and Redis's sandbox does not give a script.
not_globals = { "io", "os", "loadfile", "dofile", "require", "module", "package" }
max_line_length = 100

-- Every script is sent to Redis as prelude.lua followed by the script's own
-- text (see _scripts.py): in a script file, the prelude's locals are in scope.
local prelude = {
  "JC_MAX", "JC_I64", "JC_MS",
  "jc_fail", "jc_num", "jc_int", "jc_flag", "jc_str", "jc_arity", "jc_credit_ok",
  "jc_kept", "jc_now", "jc_time",
}
files["src/jobcredits_plugin/stores/_redis/lua/*.lua"] = { read_globals = prelude }
-- The prelude defines them for the scripts: no one script uses all of them.
files["src/jobcredits_plugin/stores/_redis/lua/prelude.lua"] = {
  ignore = { "211/jc_.*", "211/JC_.*" },
}
