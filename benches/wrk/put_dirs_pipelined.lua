-- Distinct-key v2 PUTs spread over 1024 directories (so over every shard),
-- pipelined DEPTH deep per connection so that wrk itself stays cheap: the
-- load generator shares this 2-core machine with a 2-shard kardia.
-- Used by benches/shards_scaling.sh (issue #3).
local depth = tonumber(os.getenv("DEPTH") or "16")
local counter = 0
local tid = 0
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end
local body = "value=" .. string.rep("a", 64) .. "&ttl=30"
local hdrs = { ["Content-Type"] = "application/x-www-form-urlencoded" }
function init(args)
  tid = tid or 0
end
function request()
  local batch = {}
  for i = 1, depth do
    counter = counter + 1
    batch[i] = wrk.format("PUT", "/v2/keys/hb/d" .. tostring(counter % 1024) .. "/t" ..
      tostring(tid) .. "_" .. tostring(counter), hdrs, body)
  end
  return table.concat(batch)
end
function done(summary, latency, requests)
  io.write(string.format("total=%d errors(connect=%d read=%d write=%d status=%d timeout=%d)\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
end
