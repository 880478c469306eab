-- Argo CD health of vipam.io/BGPPeer, from the status the vipam controller writes:
--   Progressing  no status yet, status.observedGeneration behind metadata.generation, or some
--                (not all) of the wanted sessions are Established
--   Degraded     Ready=False (an invalid spec), or no wanted session is Established
--   Healthy      Ready=True and every wanted session Established (status.established n/n)
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the vipam controller to report on the peer"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the vipam controller to observe generation " .. tostring(generation)
  return hs
end
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" and condition.status == "False" then
      hs.status = "Degraded"
      hs.message = tostring(condition.reason) .. ": " .. tostring(condition.message)
      return hs
    end
  end
end
-- Sessions that are not Established, with the agents' last error.
local down = {}
if status.sessions ~= nil then
  for _, session in ipairs(status.sessions) do
    if session.state ~= "Established" then
      local text = tostring(session.node) .. ": " .. tostring(session.state)
      if session.lastError ~= nil then
        text = text .. " (" .. tostring(session.lastError) .. ")"
      end
      table.insert(down, text)
    end
  end
end
local established, wanted = 0, 0
if status.established ~= nil then
  local a, b = string.match(status.established, "^(%d+)/(%d+)$")
  if a ~= nil then
    established, wanted = tonumber(a), tonumber(b)
  end
end
if wanted > 0 and established == 0 then
  hs.status = "Degraded"
  hs.message = "no session Established: " .. table.concat(down, "; ")
  return hs
end
if established < wanted then
  hs.status = "Progressing"
  hs.message = status.established .. " sessions Established; " .. table.concat(down, "; ")
  return hs
end
hs.status = "Healthy"
hs.message = tostring(status.established) .. " sessions Established"
return hs
