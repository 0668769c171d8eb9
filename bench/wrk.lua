-- wrk script for bench/run.py: POSTs a request (chat or embeddings) and prints the summary as one JSON line.
-- Arguments after `--`: <path of a file holding the request body> [<bearer key>]

local body_path, key

function init(args)
  body_path = args[1]
  key = args[2]
  local f = assert(io.open(body_path, "rb"))
  local body = f:read("*a")
  f:close()
  -- wrk.method, wrk.body and wrk.headers, and no request(): wrk builds the request once, not in Lua per request.
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
