-- wrk script: POST /api/rooms/{room}/messages alone, as one peer with a room to itself (so the
-- message is accepted and relayed to nobody). See docs/BENCHMARKS.md:
--   TOKEN=$(curl -s -X POST http://127.0.0.1:8000/api/rooms/wrk/peers | jq -r .token)
--   TOKEN=$TOKEN wrk -t1 -c64 -d10s -s benches/send.lua http://127.0.0.1:8000/api/rooms/wrk/messages
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.body = '{"type":"bench","data":{"seq":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}'

-- Any answer but 202 is counted, so a misconfigured run cannot pass for a fast one.
local refused = 0
function response(status, headers, body)
  if status ~= 202 then refused = refused + 1 end
end

function done(summary, latency, requests)
  io.write(string.format("non-202 answers: %d (wrk's own count: %d)\n", refused, summary.errors.status))
end
