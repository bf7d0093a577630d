-- Overwrite 10k keys with v2 PUT ttl=30 (the heartbeat pattern).
-- From ../shared/notes/perf-anchors.md section 8.1.
local counter = 0
local threads = {}
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end
function init(args)
  tid = tid or 0
end
local body = "value=" .. string.rep("a", 64) .. "&ttl=30"
local hdrs = { ["Content-Type"] = "application/x-www-form-urlencoded" }
-- WRK_AUTH: an Authorization header for every request (v2 auth benches).
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then hdrs["Authorization"] = auth end
-- WRK_PREFIX: the keys' prefix (default /hbo/; /hbo puts them at the top
-- level, where --unit-depth 1 spreads them over shards).
local prefix = os.getenv("WRK_PREFIX")
if not prefix or prefix == "" then prefix = "/hbo/" end
function request()
  counter = counter + 1
  return wrk.format("PUT", "/v2/keys" .. prefix .. tostring(counter % 10000), hdrs, body)
end
local non2xx = 0
function response(status, headers, b)
  if status < 200 or status >= 300 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  -- status counts every HTTP status >= 400: a run with any is not a result.
  io.write(string.format("total=%d errors(connect=%d read=%d write=%d status=%d timeout=%d)\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
  for _, p in pairs({50, 90, 99, 99.9}) do
    io.write(string.format("p%g=%.0fus ", p, latency:percentile(p)))
  end
  io.write("\n")
end
