-- wrk script for benches/flood.sh: POST /oauth/token (client credentials) and count the
-- answers by status code. Client authentication (HTTP Basic, a known client id with a
-- wrong secret) comes from the command line: wrk ... -H "Authorization: Basic …".
--
-- done() prints one line, "statuses 401=12 429=3456 503=78", which flood.sh parses.
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    if c then
      for status, n in pairs(c) do
        total[status] = (total[status] or 0) + n
      end
    end
  end
  local keys = {}
  for status in pairs(total) do
    table.insert(keys, status)
  end
  table.sort(keys)
  local parts = {}
  for _, status in ipairs(keys) do
    table.insert(parts, status .. "=" .. total[status])
  end
  io.write("statuses " .. table.concat(parts, " ") .. "\n")
end
