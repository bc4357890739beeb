-- wrk script: profile lookups by a random one of the seeded emails (customer<N>@example.com).
local token = os.getenv("KIZUNA_TOKEN")
local profiles = tonumber(os.getenv("KIZUNA_PROFILES") or "1000000")
math.randomseed(7)
request = function()
  local n = math.random(1, profiles)
  return wrk.format("GET", "/v1/profiles/lookup?email=customer" .. n .. "%40example.com",
    { ["Authorization"] = "Bearer " .. token })
end
