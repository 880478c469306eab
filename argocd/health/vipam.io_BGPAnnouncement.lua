-- Argo CD health of vipam.io/BGPAnnouncement, from the status the vipam controller writes:
--   Progressing  no status yet, or status.observedGeneration behind metadata.generation
--   Degraded     Ready=False (a selector or community that does not parse, a BGPPeer that does
--                not exist)
--   Healthy      Ready=True
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the vipam controller to report on the announcement"
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
    if condition.type == "Ready" then
      if condition.status == "False" then
        hs.status = "Degraded"
        hs.message = tostring(condition.reason) .. ": " .. tostring(condition.message)
        return hs
      end
      if condition.status == "True" then
        hs.status = "Healthy"
        hs.message = tostring(condition.message)
        return hs
      end
    end
  end
end
hs.status = "Progressing"
hs.message = "waiting for the vipam controller to report on the announcement"
return hs
